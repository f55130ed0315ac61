"""Recomputes a run's metrics.json entries from its eval_arrays.npz with scikit-learn and scipy
(not vqjax.metrics), so end-to-end tests check values, not only that they lie in [0, 1]."""
import numpy as np
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

_REDUCE = {"max": np.max, "mean": np.mean}


def _largest_area(binary):
  labels, count = ndimage.label(binary, structure=np.ones((3, 3)))  # 8-connected
  return 0 if count == 0 else int(np.bincount(labels.ravel())[1:].max())


def check_against_arrays(result: dict, arrays, variant: str, image_score: str, min_area: int):
  """Asserts result (metrics.json[variant]) equals what eval_arrays give; returns the checks."""
  maps, labels = arrays[f"map_{variant}"], arrays["labels"].astype(bool)
  if f"score_{variant}" in arrays:  # the method's own image scores (IGD Eq. 11)
    scores = arrays[f"score_{variant}"].astype(np.float64)
  else:
    scores = _REDUCE[image_score](maps.reshape(len(maps), -1).astype(np.float64), axis=1)
  checked = {"image_auroc": roc_auc_score(labels, scores)}
  keep = arrays["has_mask"]
  masks = arrays["masks"][keep]
  if masks.any():
    pixel_maps = maps[keep]
    checked["pixel_auroc"] = roc_auc_score(masks.ravel(), pixel_maps.ravel())
    per_image = [roc_auc_score(k.ravel(), m.ravel()) for m, k in zip(pixel_maps, masks)
                 if k.any() and not k.all()]
    checked["per_image_pixel_auroc"] = float(np.mean(per_image))
  if result.get("threshold") is not None:
    threshold = result["threshold"]["value"]
    decisions = np.array([_largest_area(m >= threshold) >= min_area for m in maps])
    checked["image_accuracy"] = 0.5 * (np.mean(~decisions[~labels]) + np.mean(decisions[labels]))
    checked["image_f1"] = f1_score(labels, decisions)
    if masks.any():
      checked["pixel_f1"] = f1_score(masks.ravel(), (maps[keep] >= threshold).ravel())
      overlaps = []  # Wang et al. 2020 Eq. 7, region by region
      for m, k in zip(maps[keep], masks):
        regions, count = ndimage.label(k, structure=np.ones((3, 3)))
        overlaps += [np.mean(m[regions == r] >= threshold) for r in range(1, count + 1)]
      checked["pro"] = float(np.mean(overlaps))
  for key, value in checked.items():
    assert result[key] is not None and abs(result[key] - value) < 1e-9, (variant, key,
                                                                         result[key], value)
  return checked
