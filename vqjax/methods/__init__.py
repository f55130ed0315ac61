"""Methods by name. Each exposes: from_config(config, num_channels),
fit(config, dataset, workdir, log=...) -> (variables, summary) (through the generic trainer,
whose surface is init(rng, batch) and loss(params, model_state, batch, rng)),
predict(variables, images uint8) -> dict(reconstructions, maps={variant: [B,H,W]}, ...),
encode_indices(variables, images) -> codebook indices (for codebook statistics), variants."""
from __future__ import annotations

from vqjax.methods.latent_resampling import LatentResampling
from vqjax.methods.vqvae_ssim import VQVAESSIM

METHODS = {"vqvae_ssim": VQVAESSIM, "vqvae_resample": LatentResampling}


def get_method(config, num_channels: int):
  if config.method not in METHODS:
    raise ValueError(f"config.method must be one of {sorted(METHODS)}, got {config.method!r}")
  return METHODS[config.method].from_config(config, num_channels)
