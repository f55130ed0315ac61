"""Resizing and grey-level morphology of anomaly maps [B,H,W]."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def grey_dilation(maps: jnp.ndarray, size: int) -> jnp.ndarray:
  """Flat grey dilation (max filter) of maps [B,H,W] with a size x size square.

  Equals `scipy.ndimage.grey_dilation(m, size=(size, size))` for odd sizes: padding with
  -inf gives the same result as scipy's mirrored border for a max filter, because every
  mirrored value already lies inside the window.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"dilation size must be a positive odd integer, got {size}")
  if size == 1:
    return maps
  radius = size // 2
  return lax.reduce_window(
      maps, -jnp.inf, lax.max,
      window_dimensions=(1, size, size),
      window_strides=(1, 1, 1),
      padding=((0, 0), (radius, radius), (radius, radius)))


def resize_maps(maps: jnp.ndarray, height: int, width: int, method: str = "bilinear") -> jnp.ndarray:
  """Resizes maps [B,h,w] to [B,height,width] (half-pixel centres, as torch align_corners=False)."""
  return jax.image.resize(maps, (maps.shape[0], height, width), method=method)
