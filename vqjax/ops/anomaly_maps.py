"""Anomaly maps shared by the reconstruction-based methods (Gangloff et al. 2022 §II-B, §II-C)."""
from __future__ import annotations

import jax.numpy as jnp

from vqjax.ops.morphology import grey_dilation, resize_maps
from vqjax.ops.ssim import ssim_map

CHANNEL_REDUCTIONS = ("mean", "product")


def ssim_anomaly_map(images, reconstructions, *, channel_reduction: str = "mean", **ssim_kwargs):
  """SM = 1 - SSIM per pixel: images, reconstructions [B,H,W,C] in [0,1] -> [B,H,W] float32.

  `channel_reduction` 'mean' averages 1 - SSIM over channels; 'product' multiplies the
  per-channel (1 - SSIM) (the VAE-GRF code of the same author does that). Higher = more anomalous.
  """
  dissimilarity = 1.0 - ssim_map(images, reconstructions, **ssim_kwargs)
  if channel_reduction == "mean":
    return jnp.mean(dissimilarity, axis=-1)
  if channel_reduction == "product":
    return jnp.prod(dissimilarity, axis=-1)
  raise ValueError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}")


def upsampled_alignment_map(alignment, height: int, width: int, *, method: str = "bilinear",
                            dilation: int = 1):
  """AM [B,h,w] -> resized to [B,height,width], then grey-dilated with a dilation^2 square."""
  return grey_dilation(resize_maps(alignment, height, width, method=method), dilation)
