"""IGD's networks (Chen et al. 2022 §4.2): autoencoder f_theta / g_phi and ACAI critic d_psi,
built from pre-activated residual blocks (He et al. 2016: norm, ReLU, 3x3 conv, norm, ReLU,
3x3 conv, plus a shortcut).

Encoder: a 3x3 stem conv, one block per width each halving the resolution (average pooling at
its end), norm + ReLU, flatten, Dense to the 512-d `feature` (the one knowledge distillation
regresses, Eq. 10), Dense to the d_z-d code (`to_latent`, "a linear layer to reduce the
dimensionality to 128"). Decoder: Dense to a (size / 2^n) grid of the first width, one block per
width each doubling the resolution (nearest upsampling at its start), norm + ReLU, 3x3 conv to
the image channels, no output activation (images are ImageNet-normalised). Critic: stem, down
blocks with LayerNorm (it sees mixed batches of reconstructions and interpolants; IGD's code
does the same), ReLU, spatial mean, Dense to one value per image.

Decisions: the code is a flatten + Dense (a global average pool would lose where things are,
which the decoder must restore); the blocks' widths are config values (paper: local encoder and
critic 128-256-512, decoder 256-128-64; global see configs/mvtec_igd.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.models.vqvae import batch_norm

Dtype = Any


def _norm(kind: str, train: bool, name: str):
  if kind == "batch":
    return batch_norm(train, name)
  # Over channels and space, one scale and bias per channel.
  return nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1, epsilon=1e-5, name=name)


def _resize2(x, up: bool):
  if up:  # nearest, x2
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class PreActBlock(nn.Module):
  """[B,H,W,C] -> [B,H',W',features]; resample 'down' (H/2), 'up' (2H) or None."""
  features: int
  resample: str | None = None
  norm: str = "batch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda kernel, name: nn.Conv(self.features, (kernel, kernel), padding="SAME",
                                        dtype=self.dtype, name=name)
    h = nn.relu(_norm(self.norm, train, "norm_0")(x))
    shortcut = x
    if self.resample == "up":
      h, shortcut = _resize2(h, up=True), _resize2(shortcut, up=True)
    h = conv(3, "conv_0")(h)
    h = nn.relu(_norm(self.norm, train, "norm_1")(h))
    h = conv(3, "conv_1")(h)
    if x.shape[-1] != self.features or self.resample is not None:
      shortcut = conv(1, "shortcut")(shortcut)
    if self.resample == "down":
      h, shortcut = _resize2(h, up=False), _resize2(shortcut, up=False)
    return h + shortcut


class IGDEncoder(nn.Module):
  """Images [B,S,S,3] (normalised) -> the 512-d feature [B,feature_dim] (before to_latent)."""
  widths: Sequence[int]
  feature_dim: int = 512
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Conv(self.widths[0], (3, 3), padding="SAME", dtype=self.dtype, name="stem")(x)
    for i, width in enumerate(self.widths):
      h = PreActBlock(width, "down", "batch", self.dtype, name=f"block_{i}")(h, train)
    h = nn.relu(batch_norm(train, "norm_out")(h))
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(self.feature_dim, dtype=self.dtype, name="feature")(h).astype(jnp.float32)


class IGDDecoder(nn.Module):
  """Codes [B,d_z] -> images [B,S,S,out_channels] (normalised space)."""
  widths: Sequence[int]
  image_size: int
  out_channels: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = False):
    start = self.image_size // 2 ** len(self.widths)
    h = nn.Dense(start * start * self.widths[0], dtype=self.dtype, name="project")(z)
    h = h.reshape(z.shape[0], start, start, self.widths[0])
    for i, width in enumerate(self.widths):
      h = PreActBlock(width, "up", "batch", self.dtype, name=f"block_{i}")(h, train)
    h = nn.relu(batch_norm(train, "norm_out")(h))
    out = nn.Conv(self.out_channels, (3, 3), padding="SAME", dtype=self.dtype, name="to_image")(h)
    return out.astype(jnp.float32)


class IGDAutoencoder(nn.Module):
  """f_theta (encoder + to_latent) and g_phi (decoder) of one scale (global or local)."""
  encoder_widths: Sequence[int]
  decoder_widths: Sequence[int]
  image_size: int
  latent_dim: int = 128
  feature_dim: int = 512
  out_channels: int = 3
  dtype: Dtype = jnp.float32

  def setup(self):
    self.encoder = IGDEncoder(self.encoder_widths, self.feature_dim, self.dtype)
    self.to_latent = nn.Dense(self.latent_dim, dtype=self.dtype)
    self.decoder = IGDDecoder(self.decoder_widths, self.image_size, self.out_channels,
                              self.dtype)

  def feature(self, x, train: bool = False):
    """The encoder's 512-d feature (knowledge distillation's student output)."""
    return self.encoder(x, train)

  def encode(self, x, train: bool = False, train_encoder: bool = True):
    """Codes [B,d_z]. train_encoder=False: the encoder runs in inference mode with its
    gradient stopped (frozen after distillation); to_latent always trains."""
    feature = self.encoder(x, train and train_encoder)
    if not train_encoder:
      feature = jax.lax.stop_gradient(feature)
    return self.to_latent(feature).astype(jnp.float32)

  def decode(self, z, train: bool = False):
    return self.decoder(z, train)

  def __call__(self, x, train: bool = False, train_encoder: bool = True):
    z = self.encode(x, train, train_encoder)
    return z, self.decode(z, train)


class IGDCritic(nn.Module):
  """d_psi: images [B,S,S,3] -> [B], trained to predict the interpolation coefficient."""
  widths: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.widths[0], (3, 3), padding="SAME", dtype=self.dtype, name="stem")(x)
    for i, width in enumerate(self.widths):
      h = PreActBlock(width, "down", "layer", self.dtype, name=f"block_{i}")(h)
    h = nn.relu(_norm("layer", False, "norm_out")(h))
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(1, dtype=self.dtype, name="output")(h)[:, 0].astype(jnp.float32)
