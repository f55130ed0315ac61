"""Image-level decisions from anomaly maps, in NumPy/SciPy only: shared by the evaluator
(vqjax.metrics), `predict` and the stand-alone loader of exported models (vqjax.exported),
which must run with jax + numpy alone."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

IMAGE_SCORE_REDUCTIONS = ("max", "mean")

# 8-connectivity in one [H,W] image.
_CONNECTIVITY_2D = np.ones((3, 3), dtype=bool)


def image_scores(maps: np.ndarray, reduction: str = "max") -> np.ndarray:
  """maps [N,H,W] -> scores [N] (higher = more anomalous)."""
  flat = maps.reshape(maps.shape[0], -1)
  if reduction == "max":
    return flat.max(axis=1)
  if reduction == "mean":
    return flat.mean(axis=1, dtype=np.float64)
  raise ValueError(f"eval.image_score must be one of {IMAGE_SCORE_REDUCTIONS}, got {reduction!r}")


def largest_component_areas(maps: np.ndarray, threshold: float) -> np.ndarray:
  """maps [N,H,W] -> [N] int: area of the largest 8-connected component of map >= threshold.

  0 where no pixel reaches the threshold.
  """
  maps = np.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f"maps must be [N,H,W], got shape {maps.shape}")
  areas = np.zeros(maps.shape[0], dtype=np.int64)
  for i, amap in enumerate(maps):
    components, count = ndimage.label(amap >= threshold, structure=_CONNECTIVITY_2D)
    if count:
      areas[i] = np.bincount(components.reshape(-1))[1:].max()
  return areas


def image_decisions(maps: np.ndarray, threshold: float, min_area: int = 1) -> np.ndarray:
  """maps [N,H,W] -> [N] bool: anomalous iff map >= threshold has a component of >= min_area px."""
  if min_area < 1:
    raise ValueError(f"min_area must be a positive number of pixels, got {min_area}")
  return largest_component_areas(maps, threshold) >= min_area


def image_outputs(info: dict, maps: dict, method_scores: dict, thresholds: dict) -> dict:
  """{variant: (image scores [B] float64, is_anomalous [B] bool or None)} from model-size maps
  {variant: [B,H,W]}, as evaluation scores and decides: the method's own score where it has
  one (method_scores), else the map reduced by info['image_score']; anomalous iff a component
  of >= min_area pixels (info['thresholds'][variant], 1 if none) is at or above
  thresholds[variant] (None: no decision). info: a model.json (run or export)."""
  out = {}
  for v, m in maps.items():
    m = np.asarray(m)
    score = (np.asarray(method_scores[v], np.float64) if v in method_scores
             else image_scores(m, info["image_score"]).astype(np.float64))
    min_area = ((info.get("thresholds") or {}).get(v) or {}).get("min_area", 1)
    anomalous = (None if thresholds[v] is None
                 else image_decisions(m, thresholds[v], min_area))
    out[v] = (score, anomalous)
  return out
