"""Nearest-codebook lookup (van den Oord et al. 2017, Eq. 1; Gangloff Eq. 2 and Eq. 6)."""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def nearest_codes(z: jnp.ndarray, codebook: jnp.ndarray):
  """Quantises encoder outputs z [..., D] with codebook [K, D].

  Returns (indices [...] int32, quantized [..., D], sq_distance [...] float32) where
  sq_distance = ||z - codebook[index]||^2 is the per-position alignment map (AM).
  The argmin uses the expanded form ||z||^2 - 2 z.e + ||e||^2 (one matmul); the returned
  distance is recomputed from the chosen code so it is exact and never negative.
  """
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  scores = (jnp.sum(codebook**2, axis=-1)[None, :]
            - 2.0 * jnp.matmul(flat, codebook.T, precision=lax.Precision.HIGHEST))
  indices = jnp.argmin(scores, axis=-1).astype(jnp.int32)
  quantized = jnp.take(codebook, indices, axis=0)
  sq_distance = jnp.sum(jnp.square(flat - quantized), axis=-1)
  batch_shape = z.shape[:-1]
  return (indices.reshape(batch_shape), quantized.reshape(z.shape),
          sq_distance.reshape(batch_shape))
