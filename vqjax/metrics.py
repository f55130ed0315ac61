"""Detection and localisation metrics on host NumPy arrays (scikit-learn where it exists)."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

IMAGE_SCORE_REDUCTIONS = ("max", "mean")


def image_scores(maps: np.ndarray, reduction: str = "max") -> np.ndarray:
  """maps [N,H,W] -> scores [N] (higher = more anomalous)."""
  flat = maps.reshape(maps.shape[0], -1)
  if reduction == "max":
    return flat.max(axis=1)
  if reduction == "mean":
    return flat.mean(axis=1, dtype=np.float64)
  raise ValueError(f"eval.image_score must be one of {IMAGE_SCORE_REDUCTIONS}, got {reduction!r}")


def _check_both_classes(labels: np.ndarray, what: str):
  present = np.unique(labels)
  if present.size < 2:
    raise ValueError(f"{what} AUROC needs both normal and anomalous examples; "
                     f"the test set only has label(s) {present.tolist()}")


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """AUROC of image scores [N] against labels [N] (1 = anomalous)."""
  _check_both_classes(labels, "image")
  return float(skm.roc_auc_score(labels, scores))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
  """AUROC pooled over every pixel of every test image: maps [N,H,W], masks [N,H,W] bool."""
  masks = masks.reshape(-1)
  _check_both_classes(masks, "pixel")
  return float(skm.roc_auc_score(masks, maps.reshape(-1)))
