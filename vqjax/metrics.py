"""Detection and localisation metrics on host NumPy arrays (scikit-learn where it exists).

Conventions: maps [N,H,W] float, masks [N,H,W] bool (True = anomalous pixel), scores [N] float
and labels [N] (1/True = anomalous); higher scores are more anomalous and a pixel or image is
predicted anomalous iff its score >= threshold. Every curve is exact: one point per distinct
score value, no binning. Thresholds are fitted on validation maps, never on the test set.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn import metrics as skm

# Re-exported: the evaluator and the tests read them from here.
from vqjax.decisions import (IMAGE_SCORE_REDUCTIONS, image_decisions, image_scores,  # noqa: F401
                             largest_component_areas)

# 8-connectivity for a stack [N,H,W]: neighbours only inside a slice, so regions never cross
# images.
_CONNECTIVITY_STACK = np.zeros((3, 3, 3), dtype=bool)
_CONNECTIVITY_STACK[1] = True


# --- input checks ---------------------------------------------------------------------------

def _check_both_classes(labels: np.ndarray, what: str):
  present = np.unique(labels)
  if present.size < 2:
    raise ValueError(f"{what} needs both normal and anomalous examples; "
                     f"the test set only has label(s) {present.tolist()}")


def _check_maps_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates maps [N,H,W] against masks [N,H,W]; returns (maps, masks as bool)."""
  maps, masks = np.asarray(maps), np.asarray(masks)
  if maps.ndim != 3 or maps.shape != masks.shape:
    raise ValueError(f"maps and masks must both be [N,H,W] of the same shape, "
                     f"got {maps.shape} and {masks.shape}")
  if not np.isfinite(maps).all():
    raise ValueError("anomaly maps contain NaN or infinite values")
  return maps, masks.astype(bool, copy=False)


def _flat_scores(maps: np.ndarray) -> np.ndarray:
  """maps [...] -> [P] float32/float64 view (other dtypes are cast to float64)."""
  if maps.dtype not in (np.float32, np.float64):
    maps = maps.astype(np.float64)
  return maps.reshape(-1)


# --- AUROC ----------------------------------------------------------------------------------

def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """AUROC of image scores [N] against labels [N] (1 = anomalous)."""
  _check_both_classes(labels, "image AUROC")
  return float(skm.roc_auc_score(labels, scores))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
  """AUROC pooled over every pixel of every test image: maps [N,H,W], masks [N,H,W] bool."""
  masks = masks.reshape(-1)
  _check_both_classes(masks, "pixel AUROC")
  return float(skm.roc_auc_score(masks, maps.reshape(-1)))


def per_image_pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
  """Mean pixel AUROC over anomalous images only (IGD's convention): maps [N,H,W], masks [N,H,W].

  An image counts iff its mask has at least one True and one False pixel; normal images (and
  fully anomalous ones) have no per-image AUROC and are skipped.
  """
  maps, masks = _check_maps_masks(maps, masks)
  aurocs = [skm.roc_auc_score(mask.reshape(-1), amap.reshape(-1))
            for amap, mask in zip(maps, masks) if mask.any() and not mask.all()]
  if not aurocs:
    raise ValueError("per-image pixel AUROC needs at least one test image whose mask has both "
                     "anomalous and normal pixels; none has")
  return float(np.mean(aurocs))


def roc_curve_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """ROC curve for plotting: scores [N], labels [N] -> (fpr [T], tpr [T]) from scikit-learn."""
  _check_both_classes(labels, "ROC curve")
  fpr, tpr, _ = skm.roc_curve(labels, scores)
  return fpr, tpr


# --- PRO (MVTec AD's per-region overlap) ----------------------------------------------------

def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
  """masks [N,H,W] bool -> (region id per pixel [N,H,W] int32, 0 = normal; number of regions).

  Regions are the 8-connected components of each image's mask, numbered across the whole stack.
  """
  region_ids, num_regions = ndimage.label(masks, structure=_CONNECTIVITY_STACK)
  return region_ids, int(num_regions)


def pro_curve(maps: np.ndarray, masks: np.ndarray, max_fpr: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact PRO curve (MVTec AD): maps [N,H,W] float, masks [N,H,W] bool.

  Returns (fpr [T], pro [T], thresholds [T]) float64, one point per distinct score value in
  decreasing threshold order, starting at (0, 0) with threshold +inf.
  FPR(t) = #(anomaly-free pixels with score >= t) / #anomaly-free pixels, counting every pixel
  whose mask is False in all test images, normal and anomalous images alike.
  PRO(t) = mean over all regions r (8-connected mask components, all images) of
  #(pixels of r with score >= t) / |r|.
  One descending sort of all P pixels; each pixel adds 1/#normal to FPR or 1/(|r| #regions) to
  PRO, so both are cumulative sums read off at the last pixel of each run of tied scores (a
  threshold keeps all tied pixels or none). O(P) memory, no loop over thresholds.
  If max_fpr is given, the curve stops at its first point with fpr >= max_fpr.
  """
  maps, masks = _check_maps_masks(maps, masks)
  region_ids, num_regions = _label_regions(masks)
  if num_regions == 0:
    raise ValueError("PRO needs at least one anomalous pixel; every test mask is empty")
  scores, is_normal, region_ids = _flat_scores(maps), ~masks.reshape(-1), region_ids.reshape(-1)
  num_normal = int(np.count_nonzero(is_normal))
  if num_normal == 0:
    raise ValueError("PRO needs anomaly-free pixels for its FPR; every test pixel is anomalous")

  order = np.argsort(scores)[::-1]
  sorted_scores = scores[order]
  # The last index of each run of equal scores: the curve is only defined between distinct values.
  is_run_end = np.empty(scores.size, dtype=bool)
  np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=is_run_end[:-1])
  is_run_end[-1] = True
  run_ends = np.flatnonzero(is_run_end)
  del is_run_end
  thresholds = _after_origin(sorted_scores[run_ends], np.inf)
  del sorted_scores

  # FPR from integer counts, so it is exact up to one division.
  normal_counts = np.cumsum(is_normal[order])[run_ends]
  fpr = _after_origin(normal_counts / num_normal, 0.0)
  all_regions_covered = (run_ends + 1 - normal_counts) == scores.size - num_normal
  del normal_counts

  region_sizes = np.bincount(region_ids, minlength=num_regions + 1)
  pixel_weight = np.zeros(num_regions + 1)
  pixel_weight[1:] = 1.0 / region_sizes[1:]  # id 0 (normal pixels) adds nothing to PRO
  gains = pixel_weight[region_ids[order]]
  del order, region_ids
  pro = _after_origin(np.cumsum(gains, out=gains)[run_ends] / num_regions, 0.0)
  del gains
  # The float running sum is off by at most ~P ulps; pin the known ends (PRO is a mean of
  # fractions, and exactly 1 once every region pixel is in).
  np.clip(pro, 0.0, 1.0, out=pro)
  pro[1:][all_regions_covered] = 1.0

  if max_fpr is not None:
    stop = int(np.searchsorted(fpr, max_fpr, side="left")) + 1
    fpr, pro, thresholds = fpr[:stop].copy(), pro[:stop].copy(), thresholds[:stop].copy()
  return fpr, pro, thresholds


def pro_at_threshold(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
  """Per-region overlap of the binarised maps (Wang et al. 2020 Eq. 7, Bergmann et al.): the
  mean over ground-truth regions (8-connected components of each mask) of the fraction of the
  region's pixels with map >= threshold. Small regions weigh as much as large ones."""
  maps, masks = _check_maps_masks(maps, masks)
  region_ids, num_regions = _label_regions(masks)
  if num_regions == 0:
    raise ValueError("PRO needs at least one anomalous ground-truth region")
  ids = region_ids.reshape(-1)
  area = np.bincount(ids, minlength=num_regions + 1)[1:]
  hit = np.bincount(ids, weights=(maps.reshape(-1) >= threshold), minlength=num_regions + 1)[1:]
  return float(np.mean(hit / area))


def _after_origin(values: np.ndarray, origin: float) -> np.ndarray:
  """[T] -> [T+1] float64 with origin prepended (one allocation, unlike np.concatenate + astype)."""
  out = np.empty(values.size + 1)
  out[0] = origin
  out[1:] = values
  return out


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Trapezoid area under y(x) for x in [0, x_max], y linearly interpolated at x_max.

  x is non-decreasing, starts at 0 and reaches x_max (as MVTec's official `trapezoid` with x_max;
  repeated x values are vertical steps and add no area).
  """
  inside = int(np.searchsorted(x, x_max, side="right"))  # x[:inside] <= x_max
  xs, ys = x[:inside], y[:inside]
  area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
  if xs[-1] < x_max:  # close the last partial trapezoid at exactly x_max
    x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
    y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    area += 0.5 * (y0 + y_at_max) * (x_max - x0)
  return area


def au_pro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
  """Normalised area under the exact PRO curve for FPR in [0, fpr_limit], in [0, 1].

  maps [N,H,W] float, masks [N,H,W] bool. Trapezoid rule with PRO interpolated at exactly
  fpr_limit, divided by fpr_limit so that a perfect map scores 1.0.
  """
  if not 0.0 < fpr_limit <= 1.0:
    raise ValueError(f"AU-PRO fpr_limit must be in (0, 1], got {fpr_limit}")
  fpr, pro, _ = pro_curve(maps, masks, max_fpr=fpr_limit)
  return float(np.clip(_area_up_to(fpr, pro, fpr_limit) / fpr_limit, 0.0, 1.0))


# --- F1 -------------------------------------------------------------------------------------

def f1_at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
  """F1 of predicting anomalous iff score >= threshold: scores [N], labels [N] (1 = anomalous)."""
  labels = np.asarray(labels).reshape(-1).astype(bool)
  _check_both_classes(labels, "F1")
  predicted = np.asarray(scores).reshape(-1) >= threshold
  return float(skm.f1_score(labels, predicted, zero_division=0.0))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """Best F1 over every threshold: scores [N], labels [N] -> (best_f1, its threshold).

  Exact: scikit-learn's precision-recall curve has one point per distinct score.
  """
  labels = np.asarray(labels).reshape(-1).astype(bool)
  _check_both_classes(labels, "F1")
  precision, recall, thresholds = skm.precision_recall_curve(labels, np.asarray(scores).reshape(-1))
  precision, recall = precision[:thresholds.size], recall[:thresholds.size]
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator),
                 where=denominator > 0)  # P = R = 0 counts as F1 = 0
  best = int(np.argmax(f1))
  return float(f1[best]), float(thresholds[best])


def pixel_f1_at_threshold(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
  """Pixel F1 pooled over all pixels: maps [N,H,W] float, masks [N,H,W] bool."""
  return f1_at_threshold(np.asarray(maps).reshape(-1), np.asarray(masks).reshape(-1), threshold)


def pixel_f1_max(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
  """Best pooled pixel F1 and its threshold: maps [N,H,W] float, masks [N,H,W] bool."""
  return f1_max(np.asarray(maps).reshape(-1), np.asarray(masks).reshape(-1))


# --- thresholds fitted on validation maps, and the decisions they give ----------------------



def bergmann_threshold(val_maps: np.ndarray, min_area: int) -> float:
  """Smallest threshold at which no validation map has a component of area >= min_area.

  val_maps [N,H,W] float of NORMAL validation images (Bergmann et al.'s protocol, as in Wang et
  al. 2020, sec. 4.2). Candidates are the distinct validation values plus one value above the
  max (which always qualifies: nothing is above it).
  Exact by bisection: raising the threshold only removes pixels from map >= t, so every component
  at a higher threshold lies inside one at a lower threshold and the largest area is
  non-increasing in t. "Every largest area < min_area" is therefore false below some candidate
  and true from it on; thresholds between two candidates binarise like the upper one.
  """
  if min_area < 1:
    raise ValueError(f"min_area must be a positive number of pixels, got {min_area}")
  val_maps = np.asarray(val_maps)
  if val_maps.size == 0 or not np.isfinite(val_maps).all():
    raise ValueError("validation maps must be non-empty and finite")
  values = np.unique(val_maps.astype(np.float64))
  candidates = np.append(values, np.nextafter(values[-1], np.inf))

  def quiet(threshold):
    return bool((largest_component_areas(val_maps, threshold) < min_area).all())

  low, high = 0, candidates.size - 1  # candidates[high] is known to be quiet
  while low < high:
    middle = (low + high) // 2
    if quiet(candidates[middle]):
      high = middle
    else:
      low = middle + 1
  return float(candidates[high])


def f1_adaptive_threshold(val_maps: np.ndarray, val_masks: np.ndarray) -> float:
  """Threshold maximising pooled pixel F1 on a LABELLED validation set (never the test set)."""
  return pixel_f1_max(val_maps, val_masks)[1]




def balanced_image_accuracy(decisions: np.ndarray, labels: np.ndarray) -> float:
  """Mean of the accuracies on normal and on anomalous images (Wang et al. 2020, Table 1).

  decisions [N] bool (True = predicted anomalous), labels [N] (1/True = anomalous).
  """
  decisions = np.asarray(decisions).reshape(-1).astype(bool)
  labels = np.asarray(labels).reshape(-1).astype(bool)
  if decisions.shape != labels.shape:
    raise ValueError(f"decisions and labels differ in length: {decisions.size} vs {labels.size}")
  _check_both_classes(labels, "balanced accuracy")
  normal_accuracy = np.mean(~decisions[~labels])
  anomalous_accuracy = np.mean(decisions[labels])
  return float(0.5 * (normal_accuracy + anomalous_accuracy))
