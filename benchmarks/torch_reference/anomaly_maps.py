"""PyTorch twin of `VQVAESSIM.predict`: SM = 1 - SSIM and SSIM+AM maps (Gangloff et al. 2022).

All images are NCHW, maps [B,H,W]. The SSIM map is computed as reference PyTorch code does
it (a depthwise `F.conv2d` with a 2-D Gaussian window), with two choices that keep it equal
to vqjax's `ssim_map`: the border padding (see `pad_symmetric`) and mean-centred moments.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

WINDOWS = ("gaussian", "uniform")
CHANNEL_REDUCTIONS = ("mean", "product")
# vqjax method name (jax.image.resize) -> F.interpolate mode with the same half-pixel grid.
RESIZE_MODES = {"bilinear": "bilinear", "nearest": "nearest-exact"}


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
  """E[x] in (0,1) of CB(sigmoid(logits)), any shape: 1/(1 - exp(-eta)) - 1/eta.

  Near eta = 0 (a removable singularity) the Taylor series 1/2 + eta/12 - eta^3/720 is
  used, with the same 0.1 cutoff as vqjax.
  """
  eta = logits.float()
  small = eta.abs() < 0.1
  safe = torch.where(small, torch.ones_like(eta), eta)
  exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
  e = torch.where(small, eta, torch.zeros_like(eta))
  series = 0.5 + e / 12 - e**3 / 720
  return torch.where(small, series, exact)


def window_taps(window: str, size: int, sigma: float) -> torch.Tensor:
  """1-D window weights [size] float64 summing to 1 (size odd)."""
  if window not in WINDOWS:
    raise ValueError(f"SSIM window must be one of {WINDOWS}, got {window!r}")
  if size < 1 or size % 2 == 0:
    raise ValueError(f"SSIM window size must be a positive odd integer, got {size}")
  offsets = torch.arange(size, dtype=torch.float64) - size // 2
  taps = torch.ones(size, dtype=torch.float64) if window == "uniform" else torch.exp(
      -0.5 * (offsets / sigma) ** 2)
  return taps / taps.sum()


def pad_symmetric(x: torch.Tensor, radius: int) -> torch.Tensor:
  """Pads the last two dims of x [..., H, W] by `radius` on each side, edge pixel repeated.

  This is numpy's 'symmetric' mode (d c b a | a b c d | d c b a), which vqjax and
  scikit-image use. torch's F.pad(mode='reflect') is numpy 'reflect' (d c b | a b c d):
  it skips the edge pixel, shifting every border value by one, so it is built from flips.
  """
  for dim in (-2, -1):
    n = x.shape[dim]
    if radius >= n:
      raise ValueError(f"SSIM window ({2 * radius + 1} px) is larger than the image side ({n} px)")
    left = x.narrow(dim, 0, radius).flip(dim)
    right = x.narrow(dim, n - radius, radius).flip(dim)
    x = torch.cat([left, x, right], dim=dim)
  return x


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, window: str = "gaussian",
             window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
             data_range: float = 1.0, sample_covariance: bool = False) -> torch.Tensor:
  """Per-pixel, per-channel SSIM of images x, y [B,C,H,W] -> [B,C,H,W] (float32 or float64)."""
  dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
  x, y = x.to(dtype), y.to(dtype)
  channels = x.shape[1]
  taps = window_taps(window, window_size, sigma)
  kernel = torch.outer(taps, taps).to(dtype=dtype, device=x.device)
  kernel = kernel.expand(5 * channels, 1, window_size, window_size)
  # Moments of images centred on their own mean: same (co)variances as E[ab] - E[a]E[b],
  # without the float32 cancellation of uncentred moments on smooth images (vqjax does too).
  x_offset = x.mean(dim=(2, 3), keepdim=True)
  y_offset = y.mean(dim=(2, 3), keepdim=True)
  xc, yc = x - x_offset, y - y_offset
  moments = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1)
  # One depthwise conv (groups = 5C) filters all five moment images.
  stats = F.conv2d(pad_symmetric(moments, window_size // 2), kernel, groups=5 * channels)
  mc_x, mc_y, e_xx, e_yy, e_xy = stats.split(channels, dim=1)
  cov_norm = window_size**2 / (window_size**2 - 1) if sample_covariance else 1.0
  var_x = cov_norm * (e_xx - mc_x * mc_x)
  var_y = cov_norm * (e_yy - mc_y * mc_y)
  cov_xy = cov_norm * (e_xy - mc_x * mc_y)
  mu_x, mu_y = mc_x + x_offset, mc_y + y_offset
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
  denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
  return numerator / denominator


def ssim_anomaly_map(images, reconstructions, *, channel_reduction: str = "mean",
                     **ssim_kwargs) -> torch.Tensor:
  """SM = 1 - SSIM: images, reconstructions [B,C,H,W] -> [B,H,W], reduced over channels."""
  dissimilarity = 1.0 - ssim_map(images, reconstructions, **ssim_kwargs)
  if channel_reduction == "mean":
    return dissimilarity.mean(dim=1)
  if channel_reduction == "product":
    return dissimilarity.prod(dim=1)
  raise ValueError(
      f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}")


def grey_dilation(maps: torch.Tensor, size: int) -> torch.Tensor:
  """Flat grey dilation (max filter) of maps [B,H,W] with a size x size square (size odd).

  max_pool2d pads with -inf, like vqjax's reduce_window (and equal to scipy's mirrored
  border, since a mirrored value is already inside the window).
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f"dilation size must be a positive odd integer, got {size}")
  if size == 1:
    return maps
  return F.max_pool2d(maps[:, None], kernel_size=size, stride=1, padding=size // 2)[:, 0]


def resize_maps(maps: torch.Tensor, height: int, width: int, method: str = "bilinear"):
  """Resizes maps [B,h,w] to [B,height,width] on half-pixel centres (align_corners=False).

  Equal to jax.image.resize for upsampling: both clamp to the edge pixel at the border,
  and jax's antialiasing only widens the kernel when downsampling.
  """
  if method not in RESIZE_MODES:
    raise ValueError(f"resize method must be one of {tuple(RESIZE_MODES)}, got {method!r}")
  mode = RESIZE_MODES[method]
  kwargs = dict(align_corners=False) if mode == "bilinear" else {}
  return F.interpolate(maps[:, None], size=(height, width), mode=mode, **kwargs)[:, 0]


@torch.inference_mode()
def anomaly_maps(model, images: torch.Tensor, anomaly_cfg) -> dict[str, torch.Tensor]:
  """images [B,C,H,W] in [0,1] -> dict(reconstructions [B,C,H,W], ssim [B,H,W], ssim_am [B,H,W]).

  Mirrors `vqjax.methods.vqvae_ssim.VQVAESSIM.predict`; `anomaly_cfg` is a vqjax
  `config.anomaly`. The model must be in eval mode (BatchNorm on running statistics).
  """
  return traceable_anomaly_maps(model, images, anomaly_cfg)


def traceable_anomaly_maps(model, images: torch.Tensor, anomaly_cfg) -> dict[str, torch.Tensor]:
  """`anomaly_maps` outside inference mode, for tracers (torch.compile, torch.onnx.export),
  which cannot take the inference tensors it makes."""
  if model.training:
    raise ValueError("call model.eval() first: predict uses BatchNorm running statistics")
  a = anomaly_cfg
  logits, aux = model(images)
  reconstructions = continuous_bernoulli_mean(logits)
  sm = ssim_anomaly_map(images, reconstructions, channel_reduction=a.ssim_channel_reduction,
                        window=a.ssim_window, window_size=a.ssim_window_size,
                        sigma=a.ssim_sigma, k1=a.ssim_k1, k2=a.ssim_k2, data_range=1.0,
                        sample_covariance=a.ssim_sample_covariance)
  sm = grey_dilation(sm, a.ssim_dilation)
  height, width = images.shape[2:]
  am = grey_dilation(resize_maps(aux["alignment"], height, width, method=a.am_upsample),
                     a.am_dilation)
  return dict(reconstructions=reconstructions, ssim=sm, ssim_am=sm * am)
