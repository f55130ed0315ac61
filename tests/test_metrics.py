"""Metrics against scikit-learn, slow obviously-correct references, and hand-computed cases."""
import time
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage, stats
from sklearn.metrics import f1_score, roc_auc_score

from vqjax import metrics

EIGHT_CONNECTED = np.ones((3, 3))


# --- slow references ------------------------------------------------------------------------

def _reference_pro_curve(maps, masks):
  """One binarisation per distinct threshold, regions from scipy.ndimage.label, float64."""
  maps = maps.astype(np.float64)
  labelled = [ndimage.label(mask, structure=EIGHT_CONNECTED) for mask in masks]
  anomaly_free = ~masks
  thresholds = np.unique(maps)[::-1]
  fprs, pros = [0.0], [0.0]
  for t in thresholds:
    predicted = maps >= t
    fprs.append((predicted & anomaly_free).sum() / anomaly_free.sum())
    overlaps = [predicted[i][regions == k].mean()
                for i, (regions, count) in enumerate(labelled) for k in range(1, count + 1)]
    pros.append(np.mean(overlaps))
  return np.array(fprs), np.array(pros), np.concatenate([[np.inf], thresholds])


def _reference_au_pro(fpr, pro, limit=0.3):
  """Segment by segment: whole trapezoids below the limit, the one crossing it cut by interpolation."""
  area = 0.0
  for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], pro[:-1], pro[1:]):
    if x0 >= limit:
      break
    if x1 <= limit:
      area += 0.5 * (y0 + y1) * (x1 - x0)
    else:
      y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
      area += 0.5 * (y0 + y_limit) * (limit - x0)
  return area / limit


def _random_blob_masks(rng, n, size, blobs_per_image=3, max_radius=2.5):
  """Random disc blobs; image 0 stays normal so anomaly-free pixels come from normal images too."""
  yy, xx = np.mgrid[0:size, 0:size]
  masks = np.zeros((n, size, size), bool)
  for i in range(1, n):
    for _ in range(blobs_per_image):
      cy, cx = rng.uniform(0, size, 2)
      masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(0.3, max_radius) ** 2
  return masks


def _small_pro_case(seed):
  rng = np.random.default_rng(seed)
  masks = _random_blob_masks(rng, 6, 12)
  # Diagonal-only neighbours: one region under 8-connectivity, two under 4.
  masks[2, 0, 0] = masks[2, 1, 1] = True
  masks[2, 0, 1] = masks[2, 1, 0] = False
  masks[3, 10, 9] = masks[3, 11, 10] = True
  masks[3, 10, 10] = masks[3, 11, 9] = False
  # One decimal: many ties, inside regions, between regions and across region boundaries.
  maps = np.round(0.35 * masks + rng.uniform(0, 0.8, masks.shape), 1)
  return maps, masks


# --- AUROC, ROC points, F1 vs scikit-learn --------------------------------------------------

def _tied_scores(seed, n=400):
  rng = np.random.default_rng(seed)
  labels = rng.random(n) < 0.3
  scores = np.round(rng.normal(size=n) + 0.8 * labels, 1)
  return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_and_pixel_auroc_match_sklearn_and_mann_whitney_with_ties(seed):
  scores, labels = _tied_scores(seed)
  expected = roc_auc_score(labels, scores)
  assert metrics.image_auroc(scores, labels) == pytest.approx(expected, abs=1e-6)
  # Independent of scikit-learn: AUROC = Mann-Whitney U / (n_pos n_neg), ties counting half.
  u = stats.mannwhitneyu(scores[labels], scores[~labels]).statistic
  assert metrics.image_auroc(scores, labels) == pytest.approx(u / (labels.sum() * (~labels).sum()), abs=1e-12)
  maps, masks = scores.reshape(4, 10, 10), labels.reshape(4, 10, 10)
  assert metrics.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-6)


def test_roc_curve_points_match_sklearn_area():
  scores, labels = _tied_scores(3)
  fpr, tpr = metrics.roc_curve_points(scores, labels)
  assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
  area = np.sum(0.5 * (tpr[1:] + tpr[:-1]) * np.diff(fpr))
  assert area == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_at_threshold_and_f1_max_match_sklearn_brute_force(seed):
  scores, labels = _tied_scores(seed)
  every_f1 = {t: f1_score(labels, scores >= t) for t in np.unique(scores)}
  for t in list(every_f1)[::7]:
    assert metrics.f1_at_threshold(scores, labels, t) == pytest.approx(every_f1[t], abs=1e-6)
  best_f1, threshold = metrics.f1_max(scores, labels)
  assert best_f1 == pytest.approx(max(every_f1.values()), abs=1e-6)
  assert every_f1[threshold] == pytest.approx(best_f1, abs=1e-6)
  maps, masks = scores.reshape(4, 10, 10), labels.reshape(4, 10, 10)
  assert metrics.pixel_f1_max(maps, masks) == pytest.approx((best_f1, threshold), abs=1e-6)
  assert metrics.pixel_f1_at_threshold(maps, masks, threshold) == pytest.approx(best_f1, abs=1e-6)
  assert metrics.f1_adaptive_threshold(maps, masks) == threshold


def test_f1_max_is_zero_safe_and_perfect_when_separable():
  assert metrics.f1_max(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])) == (1.0, 0.8)
  # Nothing predicted anomalous above every score: F1 = 0, not NaN.
  assert metrics.f1_at_threshold(np.array([0.1, 0.2]), np.array([0, 1]), 5.0) == 0.0


def test_per_image_pixel_auroc_is_the_mean_over_anomalous_images_only():
  rng = np.random.default_rng(4)
  masks = _random_blob_masks(rng, 8, 16)
  masks[5] = True  # fully anomalous: no per-image AUROC, skipped like the normal image 0
  maps = np.round(0.4 * masks + rng.uniform(size=masks.shape), 1)
  expected = np.mean([roc_auc_score(m.ravel(), a.ravel())
                      for a, m in zip(maps, masks) if m.any() and not m.all()])
  assert metrics.per_image_pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-6)
  assert metrics.per_image_pixel_auroc(maps, masks) != pytest.approx(metrics.pixel_auroc(maps, masks), abs=1e-6)


@pytest.mark.parametrize("metric", [
    lambda s, l: metrics.image_auroc(s, l),
    lambda s, l: metrics.pixel_auroc(s.reshape(1, 2, 2), l.reshape(1, 2, 2)),
    lambda s, l: metrics.f1_at_threshold(s, l, 0.5),
    lambda s, l: metrics.f1_max(s, l),
    lambda s, l: metrics.pixel_f1_max(s.reshape(1, 2, 2), l.reshape(1, 2, 2)),
    lambda s, l: metrics.roc_curve_points(s, l),
    lambda s, l: metrics.balanced_image_accuracy(s > 0.5, l),
])
def test_one_class_test_sets_raise_instead_of_nan(metric):
  with pytest.raises(ValueError, match="needs both normal and anomalous"):
    metric(np.array([0.1, 0.7, 0.3, 0.9]), np.zeros(4, bool))


def test_per_image_pixel_auroc_without_anomalous_images_raises():
  with pytest.raises(ValueError, match="at least one test image"):
    metrics.per_image_pixel_auroc(np.random.default_rng(0).random((3, 4, 4)), np.zeros((3, 4, 4), bool))


# --- PRO curve and AU-PRO -------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pro_curve_and_au_pro_match_the_slow_reference(seed, dtype):
  maps, masks = _small_pro_case(seed)
  maps = maps.astype(dtype)
  fpr, pro, thresholds = metrics.pro_curve(maps, masks)
  ref_fpr, ref_pro, ref_thresholds = _reference_pro_curve(maps, masks)
  assert thresholds.shape == ref_thresholds.shape  # one point per distinct score: ties merged
  np.testing.assert_array_equal(thresholds, ref_thresholds)
  np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-12)
  np.testing.assert_allclose(pro, ref_pro, rtol=0, atol=1e-12)
  for limit in (0.3, 0.05, 1.0):
    expected = _reference_au_pro(ref_fpr, ref_pro, limit)
    assert metrics.au_pro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_truncation_is_a_prefix_ending_at_the_first_point_past_max_fpr():
  maps, masks = _small_pro_case(7)
  full = metrics.pro_curve(maps, masks)
  short = metrics.pro_curve(maps, masks, max_fpr=0.3)
  assert short[0][-1] >= 0.3 > short[0][-2]
  for whole, prefix in zip(full, short):
    np.testing.assert_array_equal(whole[:prefix.size], prefix)


def test_eight_connected_regions_hand_case():
  # Region A = two diagonal pixels (one region under 8-connectivity), region B = one pixel.
  masks = np.zeros((1, 5, 5), bool)
  masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
  maps = np.zeros((1, 5, 5))
  maps[0, 0, 0], maps[0, 1, 1], maps[0, 3, 3] = 0.9, 0.5, 0.5
  maps[0, 4, 0] = 0.5  # one of the 22 anomaly-free pixels, tied with region pixels
  fpr, pro, thresholds = metrics.pro_curve(maps, masks)
  np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.0])
  # At 0.9: A half covered, B not -> (1/2 + 0) / 2; with 4-connectivity it would be 1/3.
  np.testing.assert_allclose(pro, [0, 0.25, 1, 1], atol=1e-15)
  np.testing.assert_allclose(fpr, [0, 0, 1 / 22, 1], atol=1e-15)


def test_single_pixel_region_and_an_empty_mask_among_anomalous_images():
  masks = np.zeros((2, 3, 3), bool)
  masks[0, 1, 1] = True                 # a single-pixel region
  masks[1, 0, :] = True                 # a 3-pixel region
  maps = np.zeros((2, 3, 3))
  maps[0, 1, 1] = 0.8
  maps[1, 0, 0] = 0.8
  maps[1, 2, 2] = 0.6                   # anomaly-free pixel of an anomalous image
  fpr, pro, thresholds = metrics.pro_curve(maps, masks)
  np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.6, 0.0])
  np.testing.assert_allclose(pro, [0, (1 + 1 / 3) / 2, (1 + 1 / 3) / 2, 1], atol=1e-15)
  np.testing.assert_allclose(fpr, [0, 0, 1 / 14, 1], atol=1e-15)

  # Adding an image whose mask is empty adds 9 anomaly-free pixels to the FPR denominator.
  maps3 = np.concatenate([maps, np.full((1, 3, 3), 0.1)])
  maps3[2, 0, 0] = 0.8
  masks3 = np.concatenate([masks, np.zeros((1, 3, 3), bool)])
  fpr, pro, thresholds = metrics.pro_curve(maps3, masks3)
  np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.6, 0.1, 0.0])
  np.testing.assert_allclose(fpr, [0, 1 / 23, 2 / 23, 10 / 23, 1], atol=1e-15)
  np.testing.assert_allclose(pro, [0, 2 / 3, 2 / 3, 2 / 3, 1], atol=1e-15)


def test_ties_across_a_region_boundary_move_together():
  masks = np.zeros((1, 4, 4), bool)
  masks[0, :2, :2] = True               # one 4-pixel region
  maps = np.zeros((1, 4, 4))
  maps[0, :2, :2] = [[1.0, 0.5], [0.5, 0.5]]
  maps[0, :2, 2] = 0.5                  # the 2 anomaly-free neighbours share the region's 0.5
  fpr, pro, thresholds = metrics.pro_curve(maps, masks)
  # No point may split the tie (e.g. PRO 1 at FPR 0, which would inflate the area).
  np.testing.assert_array_equal(thresholds, [np.inf, 1.0, 0.5, 0.0])
  np.testing.assert_allclose(pro, [0, 0.25, 1, 1], atol=1e-15)
  np.testing.assert_allclose(fpr, [0, 0, 2 / 12, 1], atol=1e-15)
  # Area to 0.3: (0.25 + 1) / 2 * 1/6 for the tie step, then PRO 1 from 1/6 to 0.3.
  expected = (0.5 * 1.25 / 6 + (0.3 - 1 / 6)) / 0.3
  assert metrics.au_pro(maps, masks) == pytest.approx(expected, abs=1e-15)


def test_perfect_map_scores_one_and_au_pro_never_exceeds_one():
  maps, masks = _small_pro_case(0)
  assert metrics.au_pro(masks.astype(np.float32), masks) == 1.0
  separated = masks + 0.01 * np.random.default_rng(0).random(masks.shape)
  assert metrics.au_pro(separated, masks) == pytest.approx(1.0, abs=1e-12)
  for seed in range(10):
    maps, masks = _small_pro_case(seed)
    for limit in (0.01, 0.3, 1.0):
      assert 0.0 <= metrics.au_pro(maps, masks, fpr_limit=limit) <= 1.0
      assert 0.0 <= metrics.au_pro(maps + 2.0 * masks, masks, fpr_limit=limit) <= 1.0


def test_pro_rejects_test_sets_it_cannot_score():
  maps = np.random.default_rng(0).random((2, 4, 4))
  with pytest.raises(ValueError, match="at least one anomalous pixel"):
    metrics.au_pro(maps, np.zeros((2, 4, 4), bool))
  with pytest.raises(ValueError, match="anomaly-free pixels"):
    metrics.au_pro(maps, np.ones((2, 4, 4), bool))
  with pytest.raises(ValueError, match="same shape"):
    metrics.pro_curve(maps, np.ones((2, 4, 5), bool))
  with pytest.raises(ValueError, match="NaN"):
    metrics.pro_curve(np.full((2, 4, 4), np.nan), np.ones((2, 4, 4), bool))
  with pytest.raises(ValueError, match="fpr_limit"):
    metrics.au_pro(maps, np.eye(4, dtype=bool)[None].repeat(2, 0), fpr_limit=0.0)


def test_au_pro_on_a_whole_category_is_fast_and_memory_lean():
  # ~100 test images at 256x256: 6.5M pixels, the size of one MVTec AD category.
  rng = np.random.default_rng(0)
  n, size = 100, 256
  yy, xx = np.ogrid[0:size, 0:size]
  masks = np.zeros((n, size, size), bool)
  for i in range(n // 3, n):
    for cy, cx, r in zip(*rng.uniform(0, size, (2, 3)), rng.uniform(1, 25, 3)):
      masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
  maps = (rng.random(masks.shape, dtype=np.float32) + 0.5 * masks).astype(np.float32)
  tracemalloc.start()
  start = time.perf_counter()
  value = metrics.au_pro(maps, masks)
  seconds = time.perf_counter() - start
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert 0.0 < value < 1.0
  assert seconds < 30.0
  # O(P): a handful of [P] arrays (~40 bytes per pixel), never one per threshold.
  assert peak < 64 * maps.size, f"peak {peak / 2**20:.0f} MiB for {maps.size} pixels"


# --- thresholds from validation maps and the decisions they give ----------------------------

def test_largest_component_areas_use_eight_connectivity():
  maps = np.zeros((3, 5, 5))
  maps[1, 0, 0] = maps[1, 1, 1] = maps[1, 2, 2] = 1.0  # a diagonal line: one component of 3
  maps[2, 0, :2] = 1.0                                 # a component of 2 ...
  maps[2, 3:, 3:] = 1.0                                # ... and one of 4
  np.testing.assert_array_equal(metrics.largest_component_areas(maps, 0.5), [0, 3, 4])


@pytest.mark.parametrize("min_area", [1, 3, 6])
def test_bergmann_threshold_is_the_smallest_quiet_validation_value(min_area):
  rng = np.random.default_rng(min_area)
  val_maps = np.round(ndimage.uniform_filter(rng.random((4, 10, 10)), size=(1, 3, 3)), 2)
  threshold = metrics.bergmann_threshold(val_maps, min_area)
  assert (metrics.largest_component_areas(val_maps, threshold) < min_area).all()
  values = np.unique(val_maps)
  quiet = [v for v in values if (metrics.largest_component_areas(val_maps, v) < min_area).all()]
  if threshold in values:
    assert threshold == min(quiet)
    lower = values[values < threshold]
    if lower.size:
      assert (metrics.largest_component_areas(val_maps, lower[-1]) >= min_area).any()
  else:  # only "above the max" is quiet
    assert not quiet and threshold > values[-1]
  # min_area = 1 needs every pixel below the threshold: the value just above the max.
  if min_area == 1:
    assert threshold > values[-1]


def test_bergmann_threshold_hand_case():
  val_maps = np.zeros((2, 4, 4))
  val_maps[0, 0, :3] = [0.9, 0.7, 0.7]  # >= 0.7: component of 3; >= 0.9: of 1
  val_maps[1, 2:, 2:] = 0.6             # >= 0.6: component of 4
  assert metrics.bergmann_threshold(val_maps, min_area=2) == 0.9
  assert metrics.bergmann_threshold(val_maps, min_area=4) == 0.7
  assert metrics.bergmann_threshold(val_maps, min_area=5) == 0.6
  assert metrics.bergmann_threshold(val_maps, min_area=33) == 0.0
  with pytest.raises(ValueError, match="min_area"):
    metrics.bergmann_threshold(val_maps, min_area=0)


def test_image_decisions_and_balanced_accuracy_hand_case():
  maps = np.zeros((5, 5, 5))
  maps[1, 2, 2] = 1.0                   # one pixel: below min_area 2
  maps[2, 0, 0] = maps[2, 1, 1] = 1.0   # diagonal pair: one component of 2
  maps[3, 1:3, 1:3] = 1.0               # 2x2 block
  decisions = metrics.image_decisions(maps, threshold=0.5, min_area=2)
  np.testing.assert_array_equal(decisions, [False, False, True, True, False])
  labels = np.array([0, 0, 1, 1, 1])
  # Normal: 2/2 right; anomalous: 2/3 right -> 5/6 (plain accuracy would be 4/5).
  assert metrics.balanced_image_accuracy(decisions, labels) == pytest.approx(5 / 6, abs=1e-15)
  np.testing.assert_array_equal(metrics.image_decisions(maps, 0.5), [False, True, True, True, False])


def _pro_reference(maps, masks, threshold):
  """Eq. 7 of Wang et al. 2020 in float64, one image and one region at a time."""
  overlaps = []
  for m, k in zip(maps, masks):
    labels, count = ndimage.label(k, structure=np.ones((3, 3)))
    for region in range(1, count + 1):
      inside = labels == region
      overlaps.append(np.sum((m.astype(np.float64) >= threshold) & inside) / np.sum(inside))
  return float(np.mean(overlaps))


def test_pro_at_threshold_matches_a_direct_float64_computation():
  rng = np.random.default_rng(4)
  masks = rng.random((5, 20, 20)) > 0.93  # many small regions, some touching diagonally
  maps = (rng.random((5, 20, 20)) + 0.5 * masks).astype(np.float32)
  for threshold in (0.3, 0.8, 1.2):
    assert metrics.pro_at_threshold(maps, masks, threshold) == pytest.approx(
        _pro_reference(maps, masks, threshold), abs=1e-12)
  # By hand: a 1-px region fully found and a 3-px region one third found -> (1 + 1/3) / 2.
  masks = np.zeros((1, 5, 5), bool)
  masks[0, 0, 0] = True
  masks[0, 4, 2:5] = True
  maps = np.zeros((1, 5, 5), np.float32)
  maps[0, 0, 0] = maps[0, 4, 2] = 1.0
  assert metrics.pro_at_threshold(maps, masks, 0.5) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="at least one anomalous"):
    metrics.pro_at_threshold(maps, np.zeros_like(masks), 0.5)
