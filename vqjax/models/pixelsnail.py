"""PixelSNAIL prior over VQ-VAE index tables (Chen et al. 2018; Wang et al. 2020 §3.2, §4.3.2).

logits[b,i,j] parametrise p(z_ij | z_<ij) in raster order (row by row, left to right), so one
forward pass gives every conditional of Eq. 4 at once. Layout follows the PyTorch PixelSNAIL that
Wang et al. build on: one-hot input; a causal input stack; num_blocks x PixelBlock
(num_res_blocks gated residual blocks, then causal multi-head self-attention); ELU + 1x1 conv to
K logits. §4.3.2 uses one residual block and one attention block repeated 3 times.

Causality, layer by layer (q < p means q comes before p in raster order):
- Input stack ("mask A": never sees position p itself): a [k//2, k] conv over the k//2 rows
  strictly above (the input padded on top and cut at the bottom = shifted down) plus a
  [(k+1)//2, k//2] conv whose rows end at row i and whose columns end at j-1 (shifted right).
  After it, every hidden state h[p] depends only on inputs at q < p.
- Convs inside blocks ("mask B"): the k-1 rows above (full width k) plus the current row up to
  and including column j. They mix hidden states at q <= p, which keeps h[p] a function of
  inputs at q < p. (The reference also masks the centre tap; we keep it, as PixelCNN's mask B
  does: the information is causal either way and the residual path carries it anyway.)
- 1x1 convs, GLU, ELU and residuals act per position.
- Attention: position p attends to q < p only (strictly lower-triangular mask); position 0 has
  nothing to attend to and gets exactly zero output (no NaN from an all-masked softmax row).
- Background: normalised row and column coordinates, which depend on no input.
All causal convs are zero padding + a VALID conv + a crop (ShiftedConv); no masked kernels.
The input stack over integer codes gathers kernel rows instead of convolving a one-hot
(CodeConv); float one-hot inputs take the equivalent convolution.

Convs and attention run in `dtype`; the attention softmax and the logits are float32, params are
float32. Weight normalisation (per output channel, as in the reference) is on by default.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _maybe_weight_norm(layer: nn.Module, weight_norm: bool) -> nn.Module:
  # nn.WeightNorm: kernel = scale * v / ||v||, norm over all axes but the output feature axis.
  return nn.WeightNorm(layer) if weight_norm else layer


def _window_padding(rows: tuple[int, int], cols: tuple[int, int]):
  """((top, bottom), (left, right)) zero padding for a VALID conv over the window rows x cols.

  Padded row t + r0 is original row t; a VALID conv then puts rows t+r0..t+r1 at output row t.
  When r1 < 0 the output has -r1 extra rows at the bottom, which a crop to [:H] drops
  (columns alike).
  """
  (r0, r1), (c0, c1) = rows, cols
  return (-r0, max(r1, 0)), (-c0, max(c1, 0))


class ShiftedConv(nn.Module):
  """Conv whose output at (i,j) sees input rows i+r0..i+r1 and columns j+c0..j+c1.

  rows = (r0, r1), cols = (c0, c1) with r0 <= min(r1, 0) and c0 <= min(c1, 0); outside the
  image the input is zero. x [B,H,W,C] -> [B,H,W,features]. Negative r1 / c1 give the
  "shifted down" / "shifted right" windows of the causal stacks.
  """
  features: int
  rows: tuple[int, int]
  cols: tuple[int, int]
  use_bias: bool = True
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    (r0, r1), (c0, c1) = self.rows, self.cols
    height, width = x.shape[1], x.shape[2]
    x = jnp.pad(x, ((0, 0), *_window_padding(self.rows, self.cols), (0, 0)))
    conv = nn.Conv(self.features, (r1 - r0 + 1, c1 - c0 + 1), padding="VALID",
                   use_bias=self.use_bias, dtype=self.dtype)
    return _maybe_weight_norm(conv, self.weight_norm)(x)[:, :height, :width]


class CodeConv(nn.Module):
  """ShiftedConv over the one-hot of integer codes, computed as a sum of gathered kernel rows.

  codes [B,H,W] int -> [B,H,W,features] float32; or a float one-hot / soft input [B,H,W,K]
  through the equivalent convolution (what the causality test differentiates through). A conv
  of a one-hot input adds, per tap, the kernel row of the code under it: kh*kw gathers from a
  [K, features] table instead of kh*kw*K*features multiply-adds per position (K=512: 18% of the
  paper prior's FLOPs). Same windows as ShiftedConv; outside the image the input is zero (a
  sentinel code with an all-zero kernel row). Weight normalisation per output channel, as in
  nn.WeightNorm (scale * v / ||v||).
  """
  features: int
  rows: tuple[int, int]
  cols: tuple[int, int]
  num_codes: int
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs):
    (r0, r1), (c0, c1) = self.rows, self.cols
    kh, kw = r1 - r0 + 1, c1 - c0 + 1
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, self.num_codes, self.features))
    if self.weight_norm:
      scale = self.param("scale", nn.initializers.ones, (self.features,))
      kernel = kernel * jax.lax.rsqrt(jnp.sum(kernel * kernel, axis=(0, 1, 2), keepdims=True)
                                      + 1e-12) * scale
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    height, width = inputs.shape[1], inputs.shape[2]
    padding = _window_padding(self.rows, self.cols)
    if jnp.issubdtype(inputs.dtype, jnp.integer):
      codes = jnp.pad(inputs.astype(jnp.int32), ((0, 0), *padding),
                      constant_values=self.num_codes)
      table = jnp.pad(kernel, ((0, 0), (0, 0), (0, 1), (0, 0)))  # sentinel row: zeros
      out = bias
      for a in range(kh):
        for c in range(kw):
          out = out + table[a, c][codes[:, a:a + height, c:c + width]]
      return out.astype(self.dtype)
    x = jnp.pad(inputs.astype(self.dtype), ((0, 0), *padding, (0, 0)))
    out = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (out[:, :height, :width] + bias.astype(self.dtype)).astype(self.dtype)


class CausalConv(nn.Module):
  """Mask-B causal conv: out[i,j] sees the kernel_size-1 rows above and row i up to column j.

  kernel_size 1 is a plain 1x1 conv. x [B,H,W,C] -> [B,H,W,features].
  """
  features: int
  kernel_size: int
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, half = self.kernel_size, self.kernel_size // 2
    conv = lambda rows, cols, bias: ShiftedConv(self.features, rows, cols, use_bias=bias,
                                                weight_norm=self.weight_norm, dtype=self.dtype)
    if k == 1:
      return conv((0, 0), (0, 0), True)(x)
    above = conv((-(k - 1), -1), (-half, half), False)(x)
    left = conv((0, 0), (-half, 0), True)(x)
    return above + left


class GatedResBlock(nn.Module):
  """x + GLU(conv(dropout(ELU(conv(ELU(x)) [+ conv1x1(ELU(aux))])))), convs causal (mask B).

  x [B,H,W,C] -> [B,H,W,C]; aux [B,H,W,A] or None; `channels` is the inner width.
  """
  channels: int
  kernel_size: int
  dropout: float = 0.1
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, aux=None, *, train: bool):
    conv = lambda features, k: CausalConv(features, k, weight_norm=self.weight_norm,
                                          dtype=self.dtype)
    h = conv(self.channels, self.kernel_size)(nn.elu(x))
    if aux is not None:
      h = h + conv(self.channels, 1)(nn.elu(aux))
    h = nn.Dropout(self.dropout)(nn.elu(h), deterministic=not train)
    value, gate = jnp.split(conv(2 * x.shape[-1], self.kernel_size)(h), 2, axis=-1)
    return x + value * nn.sigmoid(gate)


class CausalAttention(nn.Module):
  """Multi-head attention where raster position p attends to positions q < p only.

  query [B,H,W,Cq], key [B,H,W,Ck] -> [B,H,W,features]; values are projected from `key`.
  Position 0 attends to nothing and returns zeros.
  """
  features: int
  num_heads: int
  dropout: float = 0.1
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query, key, *, train: bool):
    if self.features % self.num_heads:
      raise ValueError(f"attention width {self.features} is not divisible by num_heads "
                       f"{self.num_heads}")
    batch, height, width, _ = query.shape
    n, head_dim = height * width, self.features // self.num_heads

    def project(x, name):
      dense = nn.Dense(self.features, dtype=self.dtype, name=name)
      y = _maybe_weight_norm(dense, self.weight_norm)(x)
      return y.reshape(batch, n, self.num_heads, head_dim)

    q, k, v = project(query, "query"), project(key, "key"), project(key, "value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
    allowed = jnp.tril(jnp.ones((n, n), bool), k=-1)  # strictly before in raster order
    # A finite fill keeps the all-masked row 0 finite (uniform); the second `where` then zeroes
    # it, and gives exactly zero weight (and gradient) to every masked pair.
    probs = jax.nn.softmax(jnp.where(allowed, scores, -1e9), axis=-1)
    probs = jnp.where(allowed, probs, 0.0)
    probs = nn.Dropout(self.dropout)(probs, deterministic=not train)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    return out.reshape(batch, height, width, self.features)


class PixelBlock(nn.Module):
  """num_res_blocks causal gated residual blocks, then causal self-attention.

  Keys/values come from concat[block input, residual output, background], queries from
  concat[residual output, background]; the attention output enters a final 1x1 gated block as
  its auxiliary input. x [B,H,W,C], background [B,H,W,2] -> [B,H,W,C].
  """
  channels: int
  kernel_size: int
  num_res_blocks: int
  num_heads: int
  dropout: float = 0.1
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, background, *, train: bool):
    block = lambda k: GatedResBlock(self.channels, k, dropout=self.dropout,
                                    weight_norm=self.weight_norm, dtype=self.dtype)
    out = x
    for _ in range(self.num_res_blocks):
      out = block(self.kernel_size)(out, train=train)
    key = block(1)(jnp.concatenate([x, out, background], axis=-1), train=train)
    query = block(1)(jnp.concatenate([out, background], axis=-1), train=train)
    # Attention width channels // 2, as in the reference implementation.
    attended = CausalAttention(self.channels // 2, self.num_heads, dropout=self.dropout,
                               weight_norm=self.weight_norm, dtype=self.dtype)(
                                   query, key, train=train)
    return block(1)(out, attended, train=train)


def positional_background(height: int, width: int) -> jax.Array:
  """[H,W,2] float32: (row - H/2) / H and (col - W/2) / W, both in [-0.5, 0.5)."""
  rows = (jnp.arange(height, dtype=jnp.float32) - height / 2) / height
  cols = (jnp.arange(width, dtype=jnp.float32) - width / 2) / width
  return jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)


class PixelSNAIL(nn.Module):
  """Autoregressive prior: indices [B,H,W] int (or one-hot [B,H,W,K] float) -> logits.

  Returns logits [B,H,W,K] float32; logits[b,i,j] depend only on the input at positions
  before (i,j) in raster order. Float inputs are used as given (one-hot or soft codes), which
  is what the causality test differentiates through.
  """
  num_codes: int = 512
  channels: int = 128
  num_blocks: int = 3           # §4.3.2: (one residual + one attention block) x 3
  num_res_blocks: int = 1
  num_heads: int = 8
  kernel_size: int = 5
  dropout: float = 0.1
  weight_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, *, train: bool):
    if self.kernel_size < 2:
      raise ValueError(f"kernel_size must be >= 2 for the causal input stack, got "
                       f"{self.kernel_size}")
    batch, height, width = inputs.shape[:3]
    background = jnp.broadcast_to(positional_background(height, width).astype(self.dtype),
                                  (batch, height, width, 2))
    k, half = self.kernel_size, self.kernel_size // 2
    conv = lambda features, rows, cols: ShiftedConv(features, rows, cols,
                                                    weight_norm=self.weight_norm, dtype=self.dtype)
    code_conv = lambda rows, cols: CodeConv(self.channels, rows, cols, self.num_codes,
                                            weight_norm=self.weight_norm, dtype=self.dtype)
    # Mask A input stack over the codes (integer tables, or float one-hot / soft codes):
    # [k//2, k] window on the rows strictly above (shifted down) plus a [(k+1)//2, k//2]
    # window ending at row i, column j-1 (shifted right). [2,5] + [3,2] at k=5.
    out = (code_conv((-half, -1), (-half, half))(inputs)
           + code_conv((-((k + 1) // 2 - 1), 0), (-half, -1))(inputs))
    for _ in range(self.num_blocks):
      out = PixelBlock(self.channels, k, self.num_res_blocks, self.num_heads,
                       dropout=self.dropout, weight_norm=self.weight_norm, dtype=self.dtype)(
                           out, background, train=train)
    logits = conv(self.num_codes, (0, 0), (0, 0))(nn.elu(out))
    return logits.astype(jnp.float32)


def nll_per_table(logits: jax.Array, indices: jax.Array) -> jax.Array:
  """Mean cross-entropy (nats per code) of each table: logits [B,H,W,K], indices [B,H,W] -> [B]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, indices[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return nll.mean(axis=(1, 2))
