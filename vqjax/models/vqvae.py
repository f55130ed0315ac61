"""VQ-VAEs of Gangloff et al. 2022 §III-A and Wang et al. 2020 §4.3.2 (after van den Oord
et al. 2017), chosen by `architecture`:

'gangloff': encoder n_down x [Conv k4 s2 p1 -> ReLU -> BatchNorm], then n_res residual layers
  [ReLU -> Conv3x3 p1 -> ReLU -> Conv1x1].
'wang': encoder n_down x [Conv k4 s2 p1 -> ReLU] (no BatchNorm), one Conv3x3 s1 p1, then the
  residual layers.
Both: a 1x1 projection to the codebook dimension D when it differs from the width (Wang's z_e
is 32 deep; the decision, as in rosinality/vq-vae-2, keeps the 3x3 conv and the residual
layers at the hidden width). Decoders: the mirror, with transposed convs. The decoder outputs
one value per pixel and channel (continuous-Bernoulli logits, or the image for an MSE loss).
Convs run in `dtype` (e.g. bfloat16); parameters, BatchNorm and the codebook stay float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.ops.vector_quantize import nearest_codes

Dtype = Any
ARCHITECTURES = ("gangloff", "wang")


class ResidualLayer(nn.Module):
  """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))) (§III-A)."""
  channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)(nn.relu(x))
    h = nn.Conv(self.channels, (1, 1), padding="VALID", dtype=self.dtype)(nn.relu(h))
    return x + h


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  # torch's BatchNorm2d defaults (momentum 0.1 = Flax 0.9, eps 1e-5). Kept in float32 whatever
  # the compute dtype (statistics of bf16 activations drift).
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=jnp.float32, name=name)


class Encoder(nn.Module):
  channels: int
  num_downsamplings: int
  num_residual_layers: int
  embedding_dim: int
  dtype: Dtype = jnp.float32
  architecture: str = "gangloff"

  @nn.compact
  def __call__(self, images, *, train: bool):
    """images [B,H,W,C] in [0,1] -> z_e [B,H/2^n,W/2^n,D] float32."""
    h = images.astype(self.dtype)
    for _ in range(self.num_downsamplings):
      h = nn.relu(nn.Conv(self.channels, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                          dtype=self.dtype)(h))
      if self.architecture == "gangloff":
        h = batch_norm(train)(h).astype(self.dtype)
    if self.architecture == "wang":
      h = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  name="conv_3x3")(h)
    for _ in range(self.num_residual_layers):
      h = ResidualLayer(self.channels, dtype=self.dtype)(h)
    if self.embedding_dim != self.channels:
      # The paper has channels == D (256); a 1x1 projection only when they differ.
      h = nn.Conv(self.embedding_dim, (1, 1), dtype=self.dtype, name="to_embedding")(h)
    return h.astype(jnp.float32)


class Decoder(nn.Module):
  channels: int
  num_downsamplings: int
  num_residual_layers: int
  out_channels: int
  dtype: Dtype = jnp.float32
  architecture: str = "gangloff"

  @nn.compact
  def __call__(self, z_q, *, train: bool):
    """z_q [B,h,w,D] -> continuous-Bernoulli logits [B,h*2^n,w*2^n,C] float32."""
    h = z_q.astype(self.dtype)
    if z_q.shape[-1] != self.channels:
      h = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="from_embedding")(h)
    if self.architecture == "wang":
      h = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  name="conv_3x3")(h)
    for _ in range(self.num_residual_layers):
      h = ResidualLayer(self.channels, dtype=self.dtype)(h)
    for i in range(self.num_downsamplings):
      last = i == self.num_downsamplings - 1
      # PyTorch ConvTranspose2d(k=4, s=2, p=1) == lax transposed conv with padding k-1-p = 2
      # and a flipped kernel (transpose_kernel=True): output exactly 2x the input.
      h = nn.ConvTranspose(self.out_channels if last else self.channels, (4, 4),
                           strides=(2, 2), padding=((2, 2), (2, 2)), transpose_kernel=True,
                           dtype=self.dtype)(h)
      if not last:
        h = nn.relu(h)
        if self.architecture == "gangloff":
          h = batch_norm(train)(h).astype(self.dtype)
    return h.astype(jnp.float32)


def _codebook_init(key, shape, dtype=jnp.float32):
  # N(0, 1), the scale of the BatchNorm-ed encoder features. The tiny U(-1/K, 1/K) of
  # van den Oord's code leaves most codes far from every encoder output, and only a
  # handful get used (codebook collapse) in short runs.
  return jax.random.normal(key, shape, dtype)


class VQVAE(nn.Module):
  """Returns (logits [B,H,W,C], aux) from images [B,H,W,C] in [0,1].

  aux: z_e [B,h,w,D], z_q [B,h,w,D] (codebook vectors, no straight-through),
  indices [B,h,w] int32, alignment [B,h,w] = ||z_e - e_k||^2 (the AM, Eq. 6).
  """
  channels: int = 256
  num_downsamplings: int = 3
  num_residual_layers: int = 3
  num_codes: int = 512
  embedding_dim: int = 256
  out_channels: int = 3
  dtype: Dtype = jnp.float32
  architecture: str = "gangloff"  # or "wang" (see the module docstring)

  def setup(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
    self.encoder = Encoder(self.channels, self.num_downsamplings, self.num_residual_layers,
                           self.embedding_dim, dtype=self.dtype, architecture=self.architecture)
    self.decoder = Decoder(self.channels, self.num_downsamplings, self.num_residual_layers,
                           self.out_channels, dtype=self.dtype, architecture=self.architecture)
    self.codebook = self.param("codebook", _codebook_init, (self.num_codes, self.embedding_dim))

  def encode(self, images, *, train: bool = False):
    return self.encoder(images, train=train)

  def quantize(self, z_e):
    """(indices [B,h,w], codebook vectors [B,h,w,D], alignment map [B,h,w])."""
    return nearest_codes(z_e, self.codebook)

  def decode(self, z_q, *, train: bool = False):
    return self.decoder(z_q, train=train)

  def decode_from_indices(self, indices, *, train: bool = False):
    return self.decode(jnp.take(self.codebook, indices, axis=0), train=train)

  def __call__(self, images, *, train: bool = False):
    z_e = self.encode(images, train=train)
    indices, z_q, alignment = self.quantize(z_e)
    # Straight-through estimator: forward uses z_q, gradient flows to z_e unchanged.
    z_st = z_e + jax.lax.stop_gradient(z_q - z_e)
    logits = self.decode(z_st, train=train)
    return logits, dict(z_e=z_e, z_q=z_q, indices=indices, alignment=alignment)
