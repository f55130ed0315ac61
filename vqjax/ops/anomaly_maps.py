"""Anomaly maps shared by the reconstruction-based methods (Gangloff et al. 2022 §II-B, §II-C)."""
from __future__ import annotations

import jax.numpy as jnp

from vqjax.ops.chunking import in_batch_chunks_on_cpu
from vqjax.ops.morphology import grey_dilation, resize_maps
from vqjax.ops.ssim import ssim_map

CHANNEL_REDUCTIONS = ("mean", "product")
# On the CPU the SSIM map is computed a chunk of images at a time (vqjax.ops.chunking), as many
# images as keep the chunk's five float32 moment images within this many bytes: 4 RGB images
# at 64 px, 1 at 128 px and up. Measured best (one thread; benchmarks/NOTES.md, deploy attempt
# 3): batch 32 at 64 px 39.5 ms whole -> 19.2 ms in chunks of 4 (8: 27.8 ms); 128 px 188 ->
# 90 ms in chunks of 1. Speed only, never values.
CPU_SSIM_CHUNK_BYTES = 1 << 20


def cpu_ssim_batch_chunk(image_shape) -> int:
  """Images per CPU chunk of the SSIM map for images of shape [H,W,C]."""
  height, width, channels = image_shape
  return max(1, CPU_SSIM_CHUNK_BYTES // (5 * height * width * channels * 4))


def ssim_anomaly_map(images, reconstructions, *, channel_reduction: str = "mean",
                     cpu_batch_chunk: int | None = None, **ssim_kwargs):
  """SM = 1 - SSIM per pixel: images, reconstructions [B,H,W,C] in [0,1] -> [B,H,W] float32.

  `channel_reduction` 'mean' averages 1 - SSIM over channels; 'product' multiplies the
  per-channel (1 - SSIM) (the VAE-GRF code of the same author does that). Higher = more anomalous.
  On the CPU, batches of 2 chunks or more are computed `cpu_batch_chunk` images at a time
  (None: `cpu_ssim_batch_chunk` of the image size; 0: the whole batch at once).
  """
  if channel_reduction not in CHANNEL_REDUCTIONS:
    raise ValueError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, "
                     f"got {channel_reduction!r}")
  reduce = jnp.mean if channel_reduction == "mean" else jnp.prod

  def per_image(x, y):
    return reduce(1.0 - ssim_map(x, y, **ssim_kwargs), axis=-1)

  if cpu_batch_chunk is None:
    cpu_batch_chunk = cpu_ssim_batch_chunk(images.shape[1:])
  return in_batch_chunks_on_cpu(per_image, cpu_batch_chunk, images, reconstructions)


def upsampled_alignment_map(alignment, height: int, width: int, *, method: str = "bilinear",
                            dilation: int = 1):
  """AM [B,h,w] -> resized to [B,height,width], then grey-dilated with a dilation^2 square."""
  return grey_dilation(resize_maps(alignment, height, width, method=method), dilation)
