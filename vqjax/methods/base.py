"""The surface every method exposes to the CLI, the trainer and the evaluator.

A method is a frozen dataclass (hashable, so its bound methods can be jitted) registered by
name in `vqjax.methods.METHODS`. Nothing outside a method's module names its config keys,
its variables or its summary entries: experiment.py only calls what is listed here.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, TypedDict

import numpy as np


class Prediction(TypedDict, total=False):
  """What `Method.predict` returns for images [B,H,W,C]; higher = more anomalous.

  maps:            {variant: [B,H,W] float32} (required), at the input's size.
  scores:          {variant: [B] float32}: image scores of its own (e.g. IGD Eq. 11); a
                   variant without one is scored by reducing its map (config.eval.image_score).
  reconstructions: [B,H,W,C] float32 in [0,1]: an image-space reconstruction, shown in the
                   overlays and saved with eval arrays when a method has one.
  Any other key (codes, resampled codes...) is the method's own and passes through.
  """
  maps: dict[str, Any]
  scores: dict[str, Any]
  reconstructions: Any


class Method(Protocol):
  variants: tuple[str, ...]  # names of the maps predict returns, in display order

  @classmethod
  def from_config(cls, config, num_channels: int) -> "Method":
    """Builds the method from a validated config for images with num_channels (1 or 3)."""

  @staticmethod
  def check_config(config) -> None:
    """Validates the method's own config keys (model, loss, anomaly, ...) and raises
    vqjax.config_checks.ConfigError naming the key; the generic keys (data, train, eval)
    are checked centrally before this is called."""

  def fit(self, config, dataset, workdir, *, log: Callable[[str], None],
          show_progress: bool = True) -> tuple[dict, dict]:
    """Trains on dataset.train (validation images may be used, test never) through
    vqjax.train; resumes from checkpoints in workdir. Returns (variables for predict,
    summary with at least 'steps', 'train_seconds', 'compile_seconds')."""

  def predict(self, variables, images) -> Prediction:
    """images [B,H,W,C] uint8 (or float in [0,1]) -> Prediction. Pure and jit-able; the
    evaluator runs it batch-sharded with a fixed batch size."""

  def run_info(self, variables, dataset, summary: dict, *, batch_size: int, mesh) -> dict:
    """What the method adds to metrics.json['run'] (e.g. codebook statistics, eta, the
    source and checksum of pretrained weights); JSON-serialisable."""


def check_prediction(prediction: Prediction, variants, batch_shape) -> None:
  """Raises ValueError when a method's prediction breaks the contract above (tests use it)."""
  if set(prediction.get("maps", {})) != set(variants):
    raise ValueError(f"predict returned maps {sorted(prediction.get('maps', {}))}, "
                     f"expected the variants {list(variants)}")
  for name, m in prediction["maps"].items():
    if tuple(np.shape(m)) != tuple(batch_shape[:3]):
      raise ValueError(f"map {name!r} has shape {np.shape(m)}, expected {batch_shape[:3]}")
  for name, s in prediction.get("scores", {}).items():
    if name not in variants or tuple(np.shape(s)) != (batch_shape[0],):
      raise ValueError(f"score {name!r} has shape {np.shape(s)}, expected ({batch_shape[0]},)")
