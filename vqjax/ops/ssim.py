"""SSIM maps as fused jnp ops (Wang et al. 2004; Gangloff et al. 2022 Eq. 5).

The local statistics are separable window sums written as shifted-slice sums over a
symmetrically padded image, which XLA fuses into a handful of elementwise kernels (no
grouped convolution). Border convention: the image is padded by mirroring with the edge
pixel repeated (numpy 'symmetric' = scipy.ndimage 'reflect'), exactly what
`skimage.metrics.structural_similarity(..., full=True)` uses, so the full-size map matches
scikit-image everywhere, borders included.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

WINDOWS = ("gaussian", "uniform")


def window_taps(window: str, size: int, sigma: float) -> np.ndarray:
  """1-D window weights [size] float64 summing to 1 (size odd)."""
  if window not in WINDOWS:
    raise ValueError(f"SSIM window must be one of {WINDOWS}, got {window!r}")
  if size < 1 or size % 2 == 0:
    raise ValueError(f"SSIM window size must be a positive odd integer, got {size}")
  radius = size // 2
  if window == "uniform":
    taps = np.ones(size)
  else:
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
  return taps / taps.sum()


def _blur_axis(x: jnp.ndarray, taps: np.ndarray, axis: int) -> jnp.ndarray:
  """Correlates x with `taps` along `axis`, mirroring at the borders; same output size."""
  radius = len(taps) // 2
  n = x.shape[axis]
  if radius >= n:
    raise ValueError(f"SSIM window ({len(taps)} px) is larger than the image side ({n} px)")
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode="symmetric")
  out = 0.0
  for k, w in enumerate(taps):
    out = out + float(w) * _slice(padded, k, n, axis)
  return out


def _slice(x: jnp.ndarray, start: int, length: int, axis: int) -> jnp.ndarray:
  index = [slice(None)] * x.ndim
  index[axis] = slice(start, start + length)
  return x[tuple(index)]


def blur(x: jnp.ndarray, taps: np.ndarray) -> jnp.ndarray:
  """Separable window filter of images [B,H,W,C] over H and W."""
  return _blur_axis(_blur_axis(x, taps, axis=1), taps, axis=2)


def ssim_terms(
    x: jnp.ndarray,
    y: jnp.ndarray,
    *,
    window: str = "gaussian",
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
    sample_covariance: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The two factors of SSIM per pixel and channel, (luminance, contrast_structure), each
  [B,H,W,C] for images x, y [B,H,W,C] (float32, or float64 for float64 inputs).

  luminance = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1); contrast_structure =
  (2 cov_xy + C2) / (var_x + var_y + C2), Wang et al.'s c * s with C3 = C2 / 2. C1 = (k1 L)^2,
  C2 = (k2 L)^2 with L = data_range. `sample_covariance` rescales (co)variances by N/(N-1),
  N = window_size^2, as scikit-image does when use_sample_covariance=True.
  """
  taps = window_taps(window, window_size, sigma)
  compute_dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)  # float64 stays float64
  x = x.astype(compute_dtype)
  y = y.astype(compute_dtype)
  # (Co)variances are E[ab] - E[a]E[b] of images centred on their own mean: the same value,
  # but without the float32 cancellation that uncentred moments suffer on smooth images.
  x_offset = jnp.mean(x, axis=(1, 2), keepdims=True)
  y_offset = jnp.mean(y, axis=(1, 2), keepdims=True)
  xc, yc = x - x_offset, y - y_offset
  # One blur over the five stacked moment images keeps it a single fused pass.
  stats = blur(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1), taps)
  mc_x, mc_y, e_xx, e_yy, e_xy = jnp.split(stats, 5, axis=-1)
  cov_norm = window_size**2 / (window_size**2 - 1) if sample_covariance else 1.0
  var_x = cov_norm * (e_xx - mc_x * mc_x)
  var_y = cov_norm * (e_yy - mc_y * mc_y)
  cov_xy = cov_norm * (e_xy - mc_x * mc_y)
  mu_x, mu_y = mc_x + x_offset, mc_y + y_offset
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
  contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
  return luminance, contrast_structure


def ssim_map(x: jnp.ndarray, y: jnp.ndarray, **kwargs) -> jnp.ndarray:
  """Per-pixel, per-channel SSIM of images x, y [B,H,W,C] -> [B,H,W,C]: luminance times
  contrast-structure of `ssim_terms` (same keyword arguments; the paper's c1=0.01, c2=0.03
  are its k1, k2)."""
  luminance, contrast_structure = ssim_terms(x, y, **kwargs)
  return luminance * contrast_structure
