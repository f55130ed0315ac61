"""Turns a method's maps (and image scores) into metrics, on the host. Only scores:
running a method over a split is vqjax.inference."""
from __future__ import annotations

import numpy as np

from vqjax import metrics
from vqjax.inference import to_unit_range_host


def mean_image_baseline(mean_image: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Trivial baseline: per-pixel L2 distance (over channels) to the mean training image
  (inference.mean_image, [H,W,C] in [0,1]). images uint8 [N,H,W,C] -> maps [N,H,W] float32."""
  diff = to_unit_range_host(images, np.float64) - mean_image
  return np.sqrt(np.sum(diff**2, axis=-1)).astype(np.float32)


def score_maps(maps: dict, split, eval_config, val_maps: dict | None = None,
               scores: dict | None = None) -> dict:
  """{name: test maps [N,H,W]} -> {name: metrics} for a labelled test split.

  Image metrics use the method's own image scores {name: [N]} where it gives them (e.g. IGD
  Eq. 11), else the map reduced by eval.image_score. Pixel metrics use only the test
  images that have pixel ground truth (None when none has). Thresholded metrics use a
  threshold fitted on the maps of the normal validation images `val_maps` (never on test).
  """
  pixel_idx = np.flatnonzero(split.pixel_mask_available)
  has_pixel_truth = pixel_idx.size > 0 and split.masks[pixel_idx].any()
  results = {}
  for name, m in maps.items():
    image_scores = (np.asarray(scores[name], np.float64) if scores and name in scores
                    else metrics.image_scores(m, eval_config.image_score))
    r = {"image_auroc": metrics.image_auroc(image_scores, split.labels),
         "image_f1_max": metrics.f1_max(image_scores, split.labels)[0],
         "pixel_auroc": None, "per_image_pixel_auroc": None, "au_pro": None, "pixel_f1_max": None}
    if has_pixel_truth:
      pm, pk = m[pixel_idx], split.masks[pixel_idx]
      r.update(pixel_auroc=metrics.pixel_auroc(pm, pk),
               per_image_pixel_auroc=metrics.per_image_pixel_auroc(pm, pk),
               au_pro=metrics.au_pro(pm, pk, eval_config.pro_fpr_limit),
               pixel_f1_max=metrics.pixel_f1_max(pm, pk)[0])
    if val_maps is not None:
      r.update(_thresholded_metrics(m, split, val_maps[name], eval_config,
                                    pixel_idx if has_pixel_truth else None))
    results[name] = r
  return results


def _thresholded_metrics(test_maps, split, val_maps, eval_config, pixel_idx) -> dict:
  """Metrics at a threshold fitted on normal validation maps (Wang et al. 2020 §4.2)."""
  if eval_config.threshold_protocol != "bergmann":
    raise ValueError(
        f"config.eval.threshold_protocol = {eval_config.threshold_protocol!r}: only 'bergmann' "
        "can be fitted here, since the validation split holds only normal images (no labels "
        "to fit 'f1_adaptive' on).")
  min_area = eval_config.min_defect_area
  threshold = metrics.bergmann_threshold(val_maps, min_area)
  decisions = metrics.image_decisions(test_maps, threshold, min_area)
  out = {"threshold": {"protocol": "bergmann", "value": threshold, "min_area": min_area},
         "image_accuracy": metrics.balanced_image_accuracy(decisions, split.labels),
         "image_f1": metrics.f1_at_threshold(decisions.astype(np.float64), split.labels, 0.5),
         "pixel_f1": None, "pro": None}
  if pixel_idx is not None:
    out["pixel_f1"] = metrics.pixel_f1_at_threshold(test_maps[pixel_idx], split.masks[pixel_idx],
                                                    threshold)
    out["pro"] = metrics.pro_at_threshold(test_maps[pixel_idx], split.masks[pixel_idx],
                                          threshold)
  return out
