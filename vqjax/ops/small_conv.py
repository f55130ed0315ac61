"""Convolutions with small outputs as one matrix product (im2col), on the CPU only.

XLA's CPU backend (jaxlib 0.10.2) runs the wide convolutions of a frozen backbone on small
maps badly at batch 1: FAVAE's VGG16 on a 32 px image (conv4 at 4x4, 512 channels) took 82 ms,
most of it in one YNNPACK library fusion that holds every convolution of the program and that no
flag removes (benchmarks/NOTES.md). Written as shifted slices of the padded input, concatenated
along channels and multiplied by the reshaped kernel, the same convolutions leave that fusion
and run as one matrix product each: 15 ms for the whole VGG16 at batch 1, level at batch 8.
Where the output has many positions the slices cost more than they save, so only outputs of at
most CPU_IM2COL_MAX_ROWS positions (batch x height x width) take that path; GPUs keep their
convolution libraries (`lax.platform_dependent` picks at lowering).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

# Chosen on this project's CPU measurements (one thread, VGG16 to conv4_3 at 32 px): at batch 1
# the whole network took 82.1 ms with XLA's convolutions, 20.8 / 15.1 / 14.5 / 15.2 ms with
# im2col for outputs of at most 16 / 64 / 256 / 1024 positions; at batch 8 (80.0 ms) 76.8 /
# 80.9 / 82.9 / 99.8 ms for 128 / 512 / 2048 / 8192. 256 is best or level at both.
CPU_IM2COL_MAX_ROWS = 256

_NHWC = ("NHWC", "HWIO", "NHWC")


def small_map_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                   precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (same signature and values), computed on the CPU as shifted
  slices and one `dot` when the output has at most CPU_IM2COL_MAX_ROWS positions.

  Pass it to `flax.linen.Conv(conv_general_dilated=...)`. Only the plain 2-D case takes the
  other path (NHWC / HWIO, no dilation, no feature or batch groups); anything else, and every
  non-CPU platform, is `lax.conv_general_dilated` itself. The batch may be symbolic
  (jax.export): then the choice is made at run time.
  """
  def conv(x, w):
    return lax.conv_general_dilated(
        x, w, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)

  plain = (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape))
  if not plain:
    return conv(lhs, rhs)
  pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
          if isinstance(padding, str) else tuple(tuple(p) for p in padding))
  out_h, out_w = (
      (size + lo + hi - k) // s + 1
      for size, (lo, hi), k, s in zip(lhs.shape[1:3], pads, rhs.shape[:2], window_strides))
  im2col = lambda x, w: _im2col_conv(x, w, window_strides, pads, (out_h, out_w), precision,
                                     preferred_element_type)
  if out_h < 1 or out_w < 1:
    return conv(lhs, rhs)
  rows = lhs.shape[0] * out_h * out_w
  if isinstance(lhs.shape[0], int):
    if rows > CPU_IM2COL_MAX_ROWS:
      return conv(lhs, rhs)
    cpu = im2col
  else:  # symbolic batch: a runtime branch
    cpu = lambda x, w: lax.cond(jnp.asarray(rows) <= CPU_IM2COL_MAX_ROWS, im2col, conv, x, w)
  return lax.platform_dependent(lhs, rhs, cpu=cpu, default=conv)


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  if dimension_numbers is None:  # lax's default is NCHW / OIHW
    return False
  return (lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC))


def _im2col_conv(x, w, strides, pads, out_size, precision, preferred_element_type):
  """x [B,H,W,C], w [kh,kw,C,O] -> [B,oh,ow,O]: the kh*kw shifted, strided views of the padded
  input side by side along channels (kernel-position-major, as w.reshape orders them), times
  the kernel as a [kh*kw*C, O] matrix. An einsum over the last axis keeps the batch axis (and
  any sharding along it) as it is."""
  kh, kw, channels, features = w.shape
  (sh, sw), (oh, ow) = strides, out_size
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  views = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
           for i in range(kh) for j in range(kw)]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return jnp.einsum("bhwk,ko->bhwo", patches, w.reshape(kh * kw * channels, features),
                    precision=precision, preferred_element_type=preferred_element_type)
