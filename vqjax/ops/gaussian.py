"""Gaussian log-likelihood maps of FAVAE (Dehaene & Eline 2020, Eq. 8 and §4).

Each modelled space (the pixels, each feature map) has a Gaussian decoder N(mu, diag(sigma_c^2))
with one variance per channel; its negative log-probability is summed over channels only, so
it is a map. Maps of the spaces are bilinearly upsampled to the image size and summed: the
same merged map is the per-pixel loss (Eq. 8) and the anomaly map (§4, Fig. 2b).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vqjax.ops.morphology import resize_maps

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll_map(targets, means, log_var):
  """-log N(targets; means, exp(log_var)) summed over channels: [B,h,w,C], [B,h,w,C], [C]
  -> [B,h,w] float32."""
  sq = jnp.square(targets.astype(jnp.float32) - means.astype(jnp.float32))
  per_channel = 0.5 * (sq * jnp.exp(-log_var) + log_var + _LOG_2PI)
  return jnp.sum(per_channel, axis=-1)


def resize_features(features, height: int, width: int):
  """[B,h,w,C] -> [B,height,width,C], bilinear with half-pixel centres and no antialiasing
  (torch's F.interpolate(mode='bilinear', align_corners=False)); identity at the same size."""
  if features.shape[1:3] == (height, width):
    return features
  shape = (features.shape[0], height, width, features.shape[-1])
  return jax.image.resize(features, shape, method="bilinear", antialias=False)


def merge_maps(maps, height: int, width: int):
  """Per-space maps [B,h_i,w_i] -> their sum after bilinear upsampling to [B,height,width]."""
  return sum(m if m.shape[1:] == (height, width) else resize_maps(m, height, width)
             for m in maps)


def kl_to_standard_normal(mean, log_var):
  """KL(N(mean, exp(log_var)) || N(0, I)) per example: [B,D], [B,D] -> [B]."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var, axis=-1)
