"""PyTorch twin of vqjax's IGD inference (Chen et al. 2022), NCHW, written from the paper.

Networks (§4.2): pre-activated residual blocks (He et al. 2016: norm, ReLU, 3x3 conv, norm,
ReLU, 3x3 conv, plus a shortcut; 'up' blocks start with a nearest x2 upsampling, 'down' blocks
end with a 2x2 average pooling, a 1x1 shortcut conv when the channels change or the block
resamples). Encoder: 3x3 stem, down blocks, BatchNorm + ReLU, flatten, Linear to the 512-d
feature, Linear to the d_z code. Decoder: Linear to a grid, up blocks, BatchNorm + ReLU, 3x3
conv to 3 channels. Critic: down blocks with a LayerNorm over (C,H,W), ReLU, spatial mean,
Linear to one value. Module names follow vqjax's Flax names, so that
`convert.load_flax_variables(model, variables, igd_parameter_mapping)` copies an
`IGDMethod`'s variables in (GSVDD centre and sigma^2 as buffers).

Scores (Eq. 8, 11, 12), written here again with torch ops (F.unfold / F.fold for the 32 px
patches every 16 px, F.avg_pool2d between MS-SSIM scales, F.interpolate back to full size):
  l_m = rho MAE / L + (1 - rho)(1 - MS-SSIM), 1 - h = 1 - exp(-|z - mu|^2 / sigma^2) per scale,
  mixed beta global + (1 - beta) local, then xi l_m + (1 - xi)(1 - h) ('igd') and l_m alone
  ('igd_reconstruction'); maps take every term at the pixel, local patches stitched back by
  coverage average. MS-SSIM follows pytorch-msssim (IGD's code): valid window positions for
  the scalar, 2x2 average pooling with zero padding for odd sides, terms clipped at 1e-12; the
  per-pixel map mirrors the borders (numpy 'symmetric', as vqjax's SSIM map).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.torch_reference.anomaly_maps import pad_symmetric, window_taps
from benchmarks.torch_reference.vqvae import BN_EPS, BN_MOMENTUM

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# §4.2: Wang et al. 2003's five MS-SSIM weights (global) and the first four rescaled (local).
GLOBAL_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
LOCAL_WEIGHTS = (0.0516, 0.3295, 0.3463, 0.2726)
TERM_FLOOR = 1e-12
LN_EPS = 1e-5
# L of C_i = (K_i L)^2 on ImageNet-normalised images: largest minus smallest value, 4.7579.
DATA_RANGE = (max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
              - min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)))
MAIN_VARIANT, RECONSTRUCTION_VARIANT = "igd", "igd_reconstruction"


# --- networks ------------------------------------------------------------------------------


class ChannelLayerNorm(nn.Module):
  """LayerNorm of [B,C,H,W] over (C,H,W) with one scale and bias per channel."""

  def __init__(self, channels: int, eps: float = LN_EPS):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))
    self.eps = eps

  def forward(self, x):
    h = F.layer_norm(x, x.shape[1:], eps=self.eps)
    return h * self.weight[:, None, None] + self.bias[:, None, None]


def _norm(kind: str, channels: int) -> nn.Module:
  if kind == "batch":
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
  return ChannelLayerNorm(channels)


class PreActBlock(nn.Module):
  """[B,Cin,H,W] -> [B,features,H',W']; resample 'down' (H/2), 'up' (2H) or None."""

  def __init__(self, in_channels: int, features: int, resample: str | None = None,
               norm: str = "batch"):
    super().__init__()
    self.resample = resample
    self.norm_0 = _norm(norm, in_channels)
    self.conv_0 = nn.Conv2d(in_channels, features, 3, padding=1)
    self.norm_1 = _norm(norm, features)
    self.conv_1 = nn.Conv2d(features, features, 3, padding=1)
    needs_shortcut = in_channels != features or resample is not None
    self.shortcut = nn.Conv2d(in_channels, features, 1) if needs_shortcut else None

  def forward(self, x):
    h, shortcut = F.relu(self.norm_0(x)), x
    if self.resample == "up":
      h = F.interpolate(h, scale_factor=2, mode="nearest")
      shortcut = F.interpolate(shortcut, scale_factor=2, mode="nearest")
    h = self.conv_1(F.relu(self.norm_1(self.conv_0(h))))
    if self.shortcut is not None:
      shortcut = self.shortcut(shortcut)
    if self.resample == "down":
      h, shortcut = F.avg_pool2d(h, 2), F.avg_pool2d(shortcut, 2)
    return h + shortcut


def _blocks(in_channels: int, widths, resample: str, norm: str) -> nn.ModuleList:
  channels = (in_channels, *widths[:-1])
  return nn.ModuleList(PreActBlock(c, w, resample, norm) for c, w in zip(channels, widths))


class IGDEncoder(nn.Module):
  """Normalised images [B,3,S,S] -> the feature [B,feature_dim]."""

  def __init__(self, widths, image_size: int, feature_dim: int = 512):
    super().__init__()
    self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
    self.blocks = _blocks(widths[0], widths, "down", "batch")
    self.norm_out = _norm("batch", widths[-1])
    side = image_size // 2 ** len(widths)
    self.feature = nn.Linear(side * side * widths[-1], feature_dim)

  def forward(self, x):
    h = self.stem(x)
    for block in self.blocks:
      h = block(h)
    h = F.relu(self.norm_out(h))
    # Flattened in (H, W, C) order, the element order of vqjax's NHWC flatten.
    return self.feature(h.permute(0, 2, 3, 1).flatten(1))


class IGDDecoder(nn.Module):
  """Codes [B,d_z] -> normalised images [B,out_channels,S,S]."""

  def __init__(self, widths, image_size: int, latent_dim: int, out_channels: int = 3):
    super().__init__()
    self.start = image_size // 2 ** len(widths)
    self.width = widths[0]
    self.project = nn.Linear(latent_dim, self.start * self.start * widths[0])
    self.blocks = _blocks(widths[0], widths, "up", "batch")
    self.norm_out = _norm("batch", widths[-1])
    self.to_image = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

  def forward(self, z):
    # The Linear's outputs are an (H, W, C) grid, as vqjax's NHWC reshape reads them.
    h = self.project(z).reshape(z.shape[0], self.start, self.start, self.width)
    h = h.permute(0, 3, 1, 2)
    for block in self.blocks:
      h = block(h)
    return self.to_image(F.relu(self.norm_out(h)))


class IGDAutoencoder(nn.Module):
  """f (encoder + to_latent) and g (decoder) of one scale."""

  def __init__(self, encoder_widths, decoder_widths, image_size: int, latent_dim: int = 128,
               feature_dim: int = 512):
    super().__init__()
    self.encoder = IGDEncoder(encoder_widths, image_size, feature_dim)
    self.to_latent = nn.Linear(feature_dim, latent_dim)
    self.decoder = IGDDecoder(decoder_widths, image_size, latent_dim)

  def forward(self, x):
    """x [B,3,S,S] -> (codes [B,d_z], reconstructions [B,3,S,S])."""
    z = self.to_latent(self.encoder(x))
    return z, self.decoder(z)


class IGDCritic(nn.Module):
  """d_psi: normalised images [B,3,S,S] -> [B]."""

  def __init__(self, widths):
    super().__init__()
    self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
    self.blocks = _blocks(widths[0], widths, "down", "layer")
    self.norm_out = _norm("layer", widths[-1])
    self.output = nn.Linear(widths[-1], 1)

  def forward(self, x):
    h = self.stem(x)
    for block in self.blocks:
      h = block(h)
    h = F.relu(self.norm_out(h)).mean(dim=(2, 3))
    return self.output(h)[:, 0]


class IGDScale(nn.Module):
  """One scale: autoencoder, critic and the GSVDD centre mu and sigma^2 (buffers)."""

  def __init__(self, encoder_widths, decoder_widths, critic_widths, image_size: int,
               latent_dim: int = 128, feature_dim: int = 512):
    super().__init__()
    self.autoencoder = IGDAutoencoder(encoder_widths, decoder_widths, image_size, latent_dim,
                                      feature_dim)
    self.critic = IGDCritic(critic_widths)
    self.register_buffer("center", torch.zeros(latent_dim))
    self.register_buffer("sigma2", torch.ones(()))


class IGD(nn.Module):
  """The 'global' scale on whole images and, with a local model, the 'local' one on patches."""

  def __init__(self, scales: dict[str, IGDScale]):
    super().__init__()
    self.scales = nn.ModuleDict(scales)

  @classmethod
  def from_config(cls, config) -> "IGD":
    """From a vqjax IGD config (model.*, data.image_size; model.dtype is ignored)."""
    m = config.model
    scales = {}
    for scale in ("global", "local") if m.local else ("global",):
      side = config.data.image_size if scale == "global" else m.local_size
      scales[scale] = IGDScale(m[f"{scale}_encoder_widths"], m[f"{scale}_decoder_widths"],
                               m[f"{scale}_critic_widths"], side, m.latent_dim, m.feature_dim)
    return cls(scales)


# --- MS-SSIM -------------------------------------------------------------------------------


def _window_filter(x, window_size: int, sigma: float, padded: bool):
  """Depthwise Gaussian filter of x [B,C,H,W]: same size with mirrored borders, or valid."""
  channels = x.shape[1]
  taps = window_taps("gaussian", window_size, sigma)
  kernel = torch.outer(taps, taps).to(dtype=x.dtype, device=x.device)
  kernel = kernel.expand(channels, 1, window_size, window_size)
  if padded:
    x = pad_symmetric(x, window_size // 2)
  return F.conv2d(x, kernel, groups=channels)


def ssim_terms(x, y, *, window_size: int, sigma: float = 1.5, k1: float = 0.01,
               k2: float = 0.03, data_range: float = 1.0, padded: bool = False):
  """(luminance, contrast_structure) per pixel and channel of x, y [B,C,H,W]: full size with
  mirrored borders (padded) or the valid window positions only. Moments of images centred on
  their own mean (the same values, fewer float32 cancellations)."""
  channels = x.shape[1]
  x_offset = x.mean(dim=(2, 3), keepdim=True)
  y_offset = y.mean(dim=(2, 3), keepdim=True)
  xc, yc = x - x_offset, y - y_offset
  moments = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1)
  stats = _window_filter(moments, window_size, sigma, padded)
  mc_x, mc_y, e_xx, e_yy, e_xy = stats.split(channels, dim=1)
  var_x, var_y, cov_xy = e_xx - mc_x * mc_x, e_yy - mc_y * mc_y, e_xy - mc_x * mc_y
  mu_x, mu_y = mc_x + x_offset, mc_y + y_offset
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
  contrast_structure = (2 * cov_xy + c2) / (var_x + var_y + c2)
  return luminance, contrast_structure


def downsample(x):
  """2x2 means; an odd side gets one zero on each side first (pytorch-msssim)."""
  return F.avg_pool2d(x, 2, padding=[side % 2 for side in x.shape[2:]])


def _scale_terms(x, y, weights, window_size, data_range, padded):
  """Each scale's term, finest first: contrast-structure, luminance x it at the last scale."""
  terms = []
  for scale in range(len(weights)):
    if scale:
      x, y = downsample(x), downsample(y)
    luminance, contrast_structure = ssim_terms(x, y, window_size=window_size,
                                               data_range=data_range, padded=padded)
    last = scale == len(weights) - 1
    terms.append(luminance * contrast_structure if last else contrast_structure)
  return terms


def ms_ssim(x, y, *, weights=GLOBAL_WEIGHTS, window_size: int = 11, data_range: float = 1.0):
  """MS-SSIM of x, y [B,C,H,W] -> [B]: per channel, the product of each scale's mean term
  (valid positions, >= 1e-12) to its weight; averaged over channels."""
  value = 1.0
  for term, w in zip(_scale_terms(x, y, weights, window_size, data_range, False), weights):
    value = value * term.mean(dim=(2, 3)).clamp_min(TERM_FLOOR) ** w
  return value.mean(dim=1)


def ms_ssim_map(x, y, *, weights=GLOBAL_WEIGHTS, window_size: int = 11,
                data_range: float = 1.0):
  """Per-pixel MS-SSIM of x, y [B,C,H,W] -> [B,H,W]: each scale's term map (>= 1e-12) brought
  back to full size by nearest upsampling, to its weight, multiplied; channel mean."""
  height, width = x.shape[2:]
  value = 1.0
  terms = _scale_terms(x, y, weights, window_size, data_range, True)
  for scale, (term, w) in enumerate(zip(terms, weights)):
    term = term.clamp_min(TERM_FLOOR)
    if scale:
      term = F.interpolate(term, scale_factor=2**scale, mode="nearest")
    value = value * term[:, :, :height, :width] ** w
  return value.mean(dim=1)


# --- patches -------------------------------------------------------------------------------


def overlapping_patches(x, size: int, stride: int):
  """[B,C,S,S] -> [B*P,C,size,size]: the windows of F.unfold, image-major, raster order."""
  channels = x.shape[1]
  columns = F.unfold(x, size, stride=stride)  # [B, C*size*size, P]
  return columns.transpose(1, 2).reshape(-1, channels, size, size)


def stitch_patch_maps(maps, batch: int, image_size: int, stride: int):
  """Patch maps [B*P,p,p] -> [B,S,S]: each pixel the mean of the patches covering it."""
  patch = maps.shape[-1]
  columns = maps.reshape(batch, -1, patch * patch).transpose(1, 2)  # [B, p*p, P]
  fold = lambda c: F.fold(c, (image_size, image_size), patch, stride=stride)[:, 0]
  return fold(columns) / fold(torch.ones_like(columns[:1]))


# --- anomaly scores and maps ---------------------------------------------------------------


def _imagenet_statistics(device):
  """ImageNet's (mean, std), each [1,3,1,1]."""
  as_nchw = lambda values: torch.tensor(values, device=device)[None, :, None, None]
  return as_nchw(IMAGENET_MEAN), as_nchw(IMAGENET_STD)


def _scale_outputs(scale: IGDScale, x, weights, window_size: int, rho: float,
                   autocast_dtype=None):
  """Normalised inputs [N,3,s,s] -> reconstructions, l_m map [N,s,s], l_m [N], 1 - h [N]."""
  with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                      enabled=autocast_dtype is not None):
    z, x_hat = scale.autoencoder(x)
  z, x_hat = z.float(), x_hat.float()
  kwargs = dict(weights=weights, window_size=window_size, data_range=DATA_RANGE)
  abs_error = (x - x_hat).abs() / DATA_RANGE
  lm_map = rho * abs_error.mean(dim=1) + (1 - rho) * (1 - ms_ssim_map(x, x_hat, **kwargs))
  lm = rho * abs_error.mean(dim=(1, 2, 3)) + (1 - rho) * (1 - ms_ssim(x, x_hat, **kwargs))
  lh = 1 - torch.exp(-((z - scale.center) ** 2).sum(dim=-1) / scale.sigma2)
  return x_hat, lm_map, lm, lh


def anomaly_outputs(model: IGD, images, config, autocast_dtype=None) -> dict:
  """images [B,C,H,W] in [0,1] (C = 1 or 3) -> dict(reconstructions [B,C,H,W],
  maps {'igd', 'igd_reconstruction'} [B,H,W], scores {...} [B]); `config` a vqjax IGD config
  (loss.rho / beta / *_window / gsvdd, anomaly.xi, model.local_size / local_stride).

  autocast_dtype (e.g. torch.bfloat16): the autoencoders run under autocast; their outputs are
  cast to float32 before the scores, as vqjax's bf16 model does."""
  if model.training:
    raise ValueError("call model.eval() first: IGD's scores use BatchNorm running statistics")
  loss = config.loss
  batch, channels, image_size = images.shape[0], images.shape[1], images.shape[-1]
  mean, std = _imagenet_statistics(images.device)
  x = (images.float().expand(-1, 3, -1, -1) - mean) / std  # grey read as RGB
  x_hat, lm_map, lm, lh = _scale_outputs(model.scales["global"], x, GLOBAL_WEIGHTS,
                                         loss.global_window, loss.rho, autocast_dtype)
  lh_map = lh[:, None, None].expand_as(lm_map)
  if "local" in model.scales:
    stride = config.model.local_stride
    patches = overlapping_patches(x, config.model.local_size, stride)
    _, lm_map_l, lm_l, lh_l = _scale_outputs(model.scales["local"], patches, LOCAL_WEIGHTS,
                                             loss.local_window, loss.rho, autocast_dtype)
    stitch = lambda m: stitch_patch_maps(m, batch, image_size, stride)
    beta = loss.beta
    lm_map = beta * lm_map + (1 - beta) * stitch(lm_map_l)
    lh_map = beta * lh_map + (1 - beta) * stitch(lh_l[:, None, None].expand_as(lm_map_l))
    lm = beta * lm + (1 - beta) * lm_l.reshape(batch, -1).mean(dim=1)
    lh = beta * lh + (1 - beta) * lh_l.reshape(batch, -1).mean(dim=1)
  xi = config.anomaly.xi if loss.gsvdd else 1.0
  reconstructions = (x_hat * std + mean).clamp(0.0, 1.0)
  if channels == 1:
    reconstructions = reconstructions.mean(dim=1, keepdim=True)
  return dict(
      reconstructions=reconstructions,
      maps={MAIN_VARIANT: xi * lm_map + (1 - xi) * lh_map, RECONSTRUCTION_VARIANT: lm_map},
      scores={MAIN_VARIANT: xi * lm + (1 - xi) * lh, RECONSTRUCTION_VARIANT: lm})
