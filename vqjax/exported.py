"""Runs a model exported with `python -m vqjax.main --mode=export`, with jax + numpy alone.

No Flax, no configs, no training code: this module imports only jax, numpy, scipy (a jax
dependency) and vqjax.decisions; Pillow only for `predict_files`. Usage::

    from vqjax.exported import load_exported
    model = load_exported("export/bottle")
    out = model(images)            # uint8 [B, S, S, C] at model.image_size
    out["maps"]["ssim_am"]         # [B, S, S] float32, higher = more anomalous
    out["scores"], out["is_anomalous"]
"""
from __future__ import annotations

import json
import pathlib

import jax
from jax import export as jax_export
import numpy as np

from vqjax import decisions

EXPORT_FORMAT = "vqjax-export/1"  # = vqjax.predict.EXPORT_FORMAT (not imported: Flax-free)


class ExportedModel:
  """A deserialised export: call it on uint8 images at image_size."""

  def __init__(self, folder):
    folder = pathlib.Path(folder)
    for name in ("model.json", "model.stablehlo", "weights.npz"):
      if not (folder / name).is_file():
        raise FileNotFoundError(f"{folder / name} is missing: not a vqjax export folder "
                                "(python -m vqjax.main --mode=export writes one)")
    self.info = json.loads((folder / "model.json").read_text())
    if self.info.get("format") != EXPORT_FORMAT:
      raise ValueError(f"{folder / 'model.json'}: format {self.info.get('format')!r}, "
                       f"expected {EXPORT_FORMAT!r}")
    self._exported = jax_export.deserialize(bytearray((folder / "model.stablehlo").read_bytes()))
    self._call = jax.jit(self._exported.call)
    # Run on a device of a platform the artifact was lowered for (e.g. a CPU export on a
    # machine whose default backend is a GPU).
    self.device = _first_device(self.info["platforms"])
    # On that device once, not copied from host memory on every call (benchmarks/NOTES.md).
    with np.load(folder / "weights.npz") as weights:
      self._weights = [jax.device_put(weights[f"w{i:05d}"], self.device)
                       for i in range(self.info["num_weights"])]
    self.image_size = int(self.info["image_size"])
    self.num_channels = int(self.info["num_channels"])
    self.variants = list(self.info["variants"])
    thresholds = self.info.get("thresholds") or {}
    self.thresholds = {v: (thresholds.get(v) or {}).get("value") for v in self.variants}

  def __call__(self, images: np.ndarray, thresholds: dict | None = None) -> dict:
    """images uint8 [B,S,S,C] -> {'maps': {variant: [B,S,S]}, 'scores': {variant: [B]},
    'is_anomalous': {variant: [B] bool or None}} as `predict` computes them."""
    out = self.maps(images)
    decided = decisions.image_outputs(self.info, out["maps"], out["scores"],
                                      {**self.thresholds, **(thresholds or {})})
    return {"maps": out["maps"], "scores": {v: d[0] for v, d in decided.items()},
            "is_anomalous": {v: d[1] for v, d in decided.items()}}

  def maps(self, images: np.ndarray) -> dict:
    """The exported function alone: images uint8 [B,S,S,C] -> {'maps': {variant: [B,S,S]},
    'scores': {variant: [B]} (the method's own scores only)}, NumPy; no thresholds."""
    images = np.asarray(images)
    expected = (self.image_size, self.image_size, self.num_channels)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [B,{','.join(map(str, expected))}], got "
                       f"{images.dtype} {list(images.shape)}")
    args, kwargs = jax.tree.unflatten(self._exported.in_tree, [*self._weights, images])
    with jax.default_device(self.device):
      out = jax.device_get(self._call(*args, **kwargs))
    return {"maps": {v: np.asarray(m) for v, m in out["maps"].items()},
            "scores": {v: np.asarray(s) for v, s in out["scores"].items()}}

  def predict_files(self, paths, thresholds: dict | None = None) -> dict:
    """Reads image files as training did (needs Pillow) and calls the model on them."""
    from vqjax import image_files  # local: Pillow only here
    batch = np.stack([image_files.image_array(image_files.read_image(pathlib.Path(p)),
                                              self.num_channels, self.image_size)
                      for p in paths])
    return self(batch, thresholds)


def _first_device(platforms):
  for platform in platforms:
    try:
      return jax.devices(platform)[0]
    except RuntimeError:  # no such backend on this machine
      continue
  raise RuntimeError(f"this artifact was exported for {platforms}; none is available here "
                     f"(available: {jax.default_backend()}); export again with --platforms")


def load_exported(folder) -> ExportedModel:
  return ExportedModel(folder)
