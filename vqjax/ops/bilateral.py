"""Bilateral filter of score maps (Wang et al. 2020 §3.4 post-processing of Eq. 6, §4.3.3).

Follows OpenCV's `cv2.bilateralFilter(src, d, sigmaColor, sigmaSpace)` for one float32 channel:
- radius = d // 2 for d > 0, else round(1.5 * sigma_space); at least 1;
- a circular window: offsets (dy, dx) with sqrt(dy^2 + dx^2) <= radius;
- weight exp(-(dy^2 + dx^2) / (2 sigma_space^2)) * exp(-(v - v0)^2 / (2 sigma_color^2));
- non-positive sigmas become 1; border BORDER_REFLECT_101 (numpy 'reflect').
The colour weight is exact here; OpenCV's float path reads it from a 4096-bin table over the
image's [min, max] range with linear interpolation (absolute weight error at most
h^2 / (8 sigma_color^2), h = (max - min) / 4096: 8.6e-8 for a 0..255 range and sigma 75).
OpenCV returns an image whose range is below FLT_EPSILON unchanged; a constant map comes back
unchanged here too (every difference is 0), a nearly constant one moves by less than its range.
"""
from __future__ import annotations

import math

import jax.numpy as jnp


def window_offsets(radius: int, sigma_space: float):
  """[(dy, dx, spatial weight)] for the circular window, centre included (weight 1)."""
  offsets = []
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      squared = dy * dy + dx * dx
      if math.sqrt(squared) <= radius:
        offsets.append((dy, dx, math.exp(-squared / (2.0 * sigma_space * sigma_space))))
  return offsets


def bilateral_filter(maps: jnp.ndarray, *, diameter: int = 20, sigma_color: float = 75.0,
                     sigma_space: float = 75.0) -> jnp.ndarray:
  """Edge-preserving smoothing of maps [B,H,W] (any float dtype) -> [B,H,W] float32.

  Defaults are the paper's (d, sigma_color, sigma_space) = (20, 75, 75) in OpenCV's convention,
  so maps are expected in 0..255 units for the colour term. One shifted slice per window offset
  (317 for d = 20), summed elementwise; XLA fuses them. jit-able with static keyword arguments.
  """
  sigma_color = sigma_color if sigma_color > 0 else 1.0
  sigma_space = sigma_space if sigma_space > 0 else 1.0
  radius = diameter // 2 if diameter > 0 else round(sigma_space * 1.5)
  radius = max(radius, 1)
  maps = maps.astype(jnp.float32)
  height, width = maps.shape[1:]
  padded = jnp.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
  colour_coeff = -0.5 / (sigma_color * sigma_color)
  # Sum weighted differences to the centre, not values: the centre term is then exactly zero
  # and float32 rounding scales with the local contrast rather than the map's magnitude.
  weighted = jnp.zeros_like(maps)
  total = jnp.zeros_like(maps)
  for dy, dx, spatial in window_offsets(radius, sigma_space):
    diff = padded[:, radius + dy:radius + dy + height, radius + dx:radius + dx + width] - maps
    weight = spatial * jnp.exp(colour_coeff * diff * diff)
    weighted = weighted + weight * diff
    total = total + weight
  return maps + weighted / total
