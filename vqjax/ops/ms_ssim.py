"""Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), scalar and per pixel, on the SSIM terms
of vqjax/ops/ssim.py (IGD, Chen et al. 2022 Eq. 8, 9 and 12).

MS-SSIM = l_M^w_M * prod_{m=1..M} cs_m^w_m: at every scale the contrast-structure term cs_m
(Wang et al.'s c * s with C3 = C2/2), at the last scale also the luminance l_M; between scales
the images are averaged over 2x2 blocks.

Conventions (those of the `pytorch-msssim` package, which the IGD code uses, so the scalar
matches it; tests check both against a float64 NumPy reference written from the paper):
  * the scalar averages each term over the *valid* window positions (no padding), per channel;
    a term <= 0 counts as 1e-12 (the power of a negative number is undefined; IGD's code does
    the same); the product is averaged over channels -> one value per image;
  * downsampling: an odd side is padded with one zero on each side and the 2x2 means include
    that padding (torch avg_pool2d(kernel 2, padding=1));
  * the smallest scale must still hold one whole window: a side of at least
    window_size * 2^(M-1) - (2^(M-1) - 1) px; smaller images raise a ValueError naming the
    minimum (pytorch-msssim asserts a looser bound and then averages an empty map).
The per-pixel map (Eq. 12: "the same loss ... for a single pixel") is the same product with
every term taken at the pixel: each scale's term maps at that scale's size (mirrored borders,
as ssim_map), repeated back to the input size (nearest, as torch's interpolate), clipped to
>= 1e-12, and averaged over channels.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vqjax.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from vqjax.ops.ssim import ssim_terms

# Chen et al. §4.2 (global: Wang et al. 2003's five weights; local: the four rescaled).
GLOBAL_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
LOCAL_WEIGHTS = (0.0516, 0.3295, 0.3463, 0.2726)
TERM_FLOOR = 1e-12


def normalized_range(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> float:
  """L of C_i = (K_i L)^2 for images in [0,1] normalised by (x - mean) / std per channel: the
  largest normalised value minus the smallest, 4.7579 for ImageNet's statistics (§4.2)."""
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  return float(np.max((1.0 - mean) / std) - np.min(-mean / std))


def downsample(x: jnp.ndarray) -> jnp.ndarray:
  """[B,H,W,C] -> [B,ceil(H/2),ceil(W/2),C]: 2x2 means, odd sides zero-padded on both sides."""
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  x = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
  height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :height, :width]
  b, _, _, c = x.shape
  return x.reshape(b, height // 2, 2, width // 2, 2, c).mean(axis=(2, 4))


def minimum_size(num_scales: int, window_size: int) -> int:
  """The smallest image side whose coarsest scale still holds one whole window."""
  size = window_size
  for _ in range(num_scales - 1):
    size = 2 * size - 1  # ceil(s / 2) >= w  <=>  s >= 2w - 1
  return size


def _check_size(shape, num_scales: int, window_size: int) -> None:
  need = minimum_size(num_scales, window_size)
  if min(shape[1], shape[2]) < need:
    raise ValueError(
        f"MS-SSIM with {num_scales} scales and a {window_size}-px window needs images of at "
        f"least {need}x{need} px (the coarsest scale must hold one window); got "
        f"{shape[1]}x{shape[2]}. Use fewer scales, a smaller window or larger images.")


def _scale_terms(x, y, weights, window_size, sigma, k1, k2, data_range):
  """The factor of each scale, finest first, as [B,h,w,C] maps at that scale's size: the
  contrast-structure term, times the luminance term at the last scale."""
  terms = []
  for scale in range(len(weights)):
    if scale:
      x, y = downsample(x), downsample(y)
    luminance, contrast_structure = ssim_terms(
        x, y, window="gaussian", window_size=window_size, sigma=sigma, k1=k1, k2=k2,
        data_range=data_range)
    last = scale == len(weights) - 1
    terms.append(luminance * contrast_structure if last else contrast_structure)
  return terms


def ms_ssim(x: jnp.ndarray, y: jnp.ndarray, *, weights=GLOBAL_WEIGHTS, window_size: int = 11,
            sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
            data_range: float = 1.0) -> jnp.ndarray:
  """MS-SSIM of images x, y [B,H,W,C] -> [B] (differentiable)."""
  _check_size(x.shape, len(weights), window_size)
  radius = window_size // 2
  valid = lambda m: m[:, radius:m.shape[1] - radius, radius:m.shape[2] - radius]
  value = 1.0
  terms = _scale_terms(x, y, weights, window_size, sigma, k1, k2, data_range)
  for term, w in zip(terms, weights):
    per_channel = jnp.mean(valid(term), axis=(1, 2))  # [B,C]
    value = value * jnp.maximum(per_channel, TERM_FLOOR) ** w
  return jnp.mean(value, axis=-1)


def _to_size(m: jnp.ndarray, factor: int, height: int, width: int) -> jnp.ndarray:
  """Nearest upsampling of a scale's map [B,h,w,C] by `factor`, cropped to [B,H,W,C]."""
  if factor > 1:
    m = jnp.repeat(jnp.repeat(m, factor, axis=1), factor, axis=2)
  return m[:, :height, :width]


def ms_ssim_map(x: jnp.ndarray, y: jnp.ndarray, *, weights=GLOBAL_WEIGHTS,
                window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
                data_range: float = 1.0) -> jnp.ndarray:
  """Per-pixel MS-SSIM of images x, y [B,H,W,C] -> [B,H,W] (see the module docstring)."""
  _check_size(x.shape, len(weights), window_size)
  height, width = x.shape[1:3]
  value = 1.0
  terms = _scale_terms(x, y, weights, window_size, sigma, k1, k2, data_range)
  for scale, (term, w) in enumerate(zip(terms, weights)):
    term = _to_size(jnp.maximum(term, TERM_FLOOR), 2**scale, height, width)
    value = value * term**w
  return jnp.mean(value, axis=-1)
