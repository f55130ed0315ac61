"""PyTorch twin of `vqjax.models.vqvae.VQVAE` (Gangloff et al. 2022 §III-A), NCHW.

Encoder: n_down x [Conv k4 s2 p1 -> ReLU -> BatchNorm], n_res residual layers, and a 1x1
`to_embedding` projection only when embedding_dim != channels. Decoder: `from_embedding`
(same condition), n_res residual layers, (n_down - 1) x [ConvTranspose k4 s2 p1 -> ReLU ->
BatchNorm], then a last ConvTranspose to out_channels with no activation: the
continuous-Bernoulli logits. Module names are the ones `convert.load_flax_variables` maps.
"""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

# torch's BatchNorm momentum weighs the new batch; flax's (0.9) weighs the old average.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


class ResidualLayer(nn.Module):
  """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))), channels preserved."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv3 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
    self.conv1 = nn.Conv2d(channels, channels, kernel_size=1)

  def forward(self, x):
    return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class DownBlock(nn.Module):
  """[B,Cin,H,W] -> [B,Cout,H/2,W/2]: Conv k4 s2 p1 -> ReLU -> BatchNorm."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
    self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)

  def forward(self, x):
    return self.bn(F.relu(self.conv(x)))


class UpBlock(nn.Module):
  """[B,C,h,w] -> [B,C,2h,2w]: ConvTranspose k4 s2 p1 -> ReLU -> BatchNorm."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1)
    self.bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)

  def forward(self, x):
    return self.bn(F.relu(self.conv(x)))


class Encoder(nn.Module):
  """images [B,C,H,W] in [0,1] -> z_e [B,D,H/2^n,W/2^n]."""

  def __init__(self, in_channels: int, channels: int, num_downsamplings: int,
               num_residual_layers: int, embedding_dim: int):
    super().__init__()
    widths = [in_channels] + [channels] * num_downsamplings
    self.down = nn.ModuleList(DownBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
    self.residual = nn.ModuleList(ResidualLayer(channels) for _ in range(num_residual_layers))
    # As in the Flax model: a projection only when the widths differ.
    self.to_embedding = (nn.Conv2d(channels, embedding_dim, kernel_size=1)
                         if embedding_dim != channels else None)

  def forward(self, x):
    for block in self.down:
      x = block(x)
    for layer in self.residual:
      x = layer(x)
    if self.to_embedding is not None:
      x = self.to_embedding(x)
    return x


class Decoder(nn.Module):
  """z_q [B,D,h,w] -> continuous-Bernoulli logits [B,C,h*2^n,w*2^n]."""

  def __init__(self, embedding_dim: int, channels: int, num_downsamplings: int,
               num_residual_layers: int, out_channels: int):
    super().__init__()
    self.from_embedding = (nn.Conv2d(embedding_dim, channels, kernel_size=1)
                           if embedding_dim != channels else None)
    self.residual = nn.ModuleList(ResidualLayer(channels) for _ in range(num_residual_layers))
    self.up = nn.ModuleList(UpBlock(channels) for _ in range(num_downsamplings - 1))
    self.last = nn.ConvTranspose2d(channels, out_channels, kernel_size=4, stride=2, padding=1)

  def forward(self, z):
    x = z if self.from_embedding is None else self.from_embedding(z)
    for layer in self.residual:
      x = layer(x)
    for block in self.up:
      x = block(x)
    return self.last(x)


class VQVAE(nn.Module):
  """images [B,C,H,W] in [0,1] -> (logits [B,C,H,W], aux).

  aux: z_e, z_q [B,D,h,w]; indices [B,h,w] int64; alignment [B,h,w] = ||z_e - e_k||^2.
  """

  def __init__(self, channels: int = 256, num_downsamplings: int = 3,
               num_residual_layers: int = 3, num_codes: int = 512, embedding_dim: int = 256,
               out_channels: int = 3):
    super().__init__()
    if num_downsamplings < 1:
      raise ValueError(f"num_downsamplings must be >= 1, got {num_downsamplings}")
    self.encoder = Encoder(out_channels, channels, num_downsamplings, num_residual_layers,
                           embedding_dim)
    self.decoder = Decoder(embedding_dim, channels, num_downsamplings, num_residual_layers,
                           out_channels)
    self.codebook = nn.Embedding(num_codes, embedding_dim)
    nn.init.normal_(self.codebook.weight)  # N(0, 1), as the Flax codebook

  @classmethod
  def from_config(cls, model_cfg, out_channels: int) -> "VQVAE":
    """From a vqjax `config.model` (its `dtype` is ignored: this model runs float32)."""
    return cls(channels=model_cfg.channels, num_downsamplings=model_cfg.num_downsamplings,
               num_residual_layers=model_cfg.num_residual_layers,
               num_codes=model_cfg.num_codes, embedding_dim=model_cfg.embedding_dim,
               out_channels=out_channels)

  def quantize(self, z_e):
    """z_e [B,D,h,w] -> (indices [B,h,w], z_q [B,D,h,w], alignment [B,h,w])."""
    b, d, h, w = z_e.shape
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    codes = self.codebook.weight
    # Expanded ||z - e||^2 (one matmul, as torch.cdist's mm path); argmin keeps the first
    # of equal distances, as jnp.argmin does.
    distances = (flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codes.t()
                 + codes.pow(2).sum(1)[None, :])
    indices = distances.argmin(1)
    quantized = F.embedding(indices, codes)
    # Recomputed from the chosen code: exact and never negative (the expanded form is not).
    alignment = (flat - quantized).pow(2).sum(1)
    z_q = quantized.view(b, h, w, d).permute(0, 3, 1, 2)
    return indices.view(b, h, w), z_q, alignment.view(b, h, w)

  def forward(self, images):
    z_e = self.encoder(images)
    indices, z_q, alignment = self.quantize(z_e)
    # Straight-through estimator, written as in the Flax model so the forward rounds alike.
    z_st = z_e + (z_q - z_e).detach()
    logits = self.decoder(z_st)
    return logits, dict(z_e=z_e, z_q=z_q, indices=indices, alignment=alignment)
