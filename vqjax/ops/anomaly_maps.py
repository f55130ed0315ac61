"""Anomaly maps shared by the reconstruction-based methods (Gangloff et al. 2022 §II-B, §II-C)."""
from __future__ import annotations

import jax.numpy as jnp

from vqjax.ops.chunking import in_batch_chunks_on_cpu
from vqjax.ops.morphology import grey_dilation, resize_maps
from vqjax.ops.ssim import ssim_map

CHANNEL_REDUCTIONS = ("mean", "product")
# Images per chunk of the SSIM map on the CPU (vqjax.ops.chunking): batch 32 at 64 px took
# 38.5 ms whole, 20-23 ms in chunks of 4-8 (benchmarks/NOTES.md). Speed only, never values.
CPU_SSIM_BATCH_CHUNK = 8


def ssim_anomaly_map(images, reconstructions, *, channel_reduction: str = "mean",
                     cpu_batch_chunk: int = CPU_SSIM_BATCH_CHUNK, **ssim_kwargs):
  """SM = 1 - SSIM per pixel: images, reconstructions [B,H,W,C] in [0,1] -> [B,H,W] float32.

  `channel_reduction` 'mean' averages 1 - SSIM over channels; 'product' multiplies the
  per-channel (1 - SSIM) (the VAE-GRF code of the same author does that). Higher = more anomalous.
  On the CPU, batches of 2 * cpu_batch_chunk images or more are computed cpu_batch_chunk at a
  time (0: whole).
  """
  if channel_reduction not in CHANNEL_REDUCTIONS:
    raise ValueError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, "
                     f"got {channel_reduction!r}")
  reduce = jnp.mean if channel_reduction == "mean" else jnp.prod

  def per_image(x, y):
    return reduce(1.0 - ssim_map(x, y, **ssim_kwargs), axis=-1)

  return in_batch_chunks_on_cpu(per_image, cpu_batch_chunk, images, reconstructions)


def upsampled_alignment_map(alignment, height: int, width: int, *, method: str = "bilinear",
                            dilation: int = 1):
  """AM [B,h,w] -> resized to [B,height,width], then grey-dilated with a dilation^2 square."""
  return grey_dilation(resize_maps(alignment, height, width, method=method), dilation)
