"""Methods by name. Each exposes: from_config(config, num_channels), init(rng, images),
loss(params, model_state, images, rng) -> (loss, (model_state, metrics)),
predict(variables, images) -> dict(reconstructions, maps={variant: [B,H,W]}, ...), variants."""
from __future__ import annotations

from vqjax.methods.vqvae_ssim import VQVAESSIM

METHODS = {"vqvae_ssim": VQVAESSIM}


def get_method(config, num_channels: int):
  if config.method not in METHODS:
    raise ValueError(f"config.method must be one of {sorted(METHODS)}, got {config.method!r}")
  return METHODS[config.method].from_config(config, num_channels)
