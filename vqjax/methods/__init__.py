"""Methods by name; each implements the surface of vqjax.methods.base.Method (from_config,
check_config, fit, predict, run_info, variants)."""
from __future__ import annotations

from vqjax.methods.favae import FAVAEMethod
from vqjax.methods.igd import IGDMethod
from vqjax.methods.latent_resampling import LatentResampling
from vqjax.methods.vqvae_ssim import VQVAESSIM

METHODS = {"vqvae_ssim": VQVAESSIM, "vqvae_resample": LatentResampling, "favae": FAVAEMethod,
           "igd": IGDMethod}


def get_method(config, num_channels: int):
  if config.method not in METHODS:
    raise ValueError(f"config.method must be one of {sorted(METHODS)}, got {config.method!r}")
  return METHODS[config.method].from_config(config, num_channels)
