"""Batched, fixed-shape inference over a split (device placement, multi-process gather).

Below methods/ in the dependency order: methods use it for their own passes (codes of the
training set, eta search), experiment.py for test and validation maps; nothing here scores.
"""
from __future__ import annotations

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from vqjax import sharding


def to_unit_range(images):
  """uint8 images -> float32 in [0,1] (on device); float images pass through as float32."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def to_unit_range_host(images: np.ndarray, dtype=np.float32) -> np.ndarray:
  """Host twin of to_unit_range (reports, baselines): uint8 -> dtype in [0,1]."""
  if np.issubdtype(images.dtype, np.integer):
    return images.astype(dtype) / 255.0
  return images.astype(dtype)


def make_predict_fn(fn, mesh):
  """Jitted (variables, images uint8 [B,H,W,C]) -> fn's outputs, batch-sharded over `mesh`."""
  return jax.jit(fn, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=sharding.batch_sharded(mesh))


def predict_split(predict_fn, variables, images: np.ndarray, batch_size: int, mesh) -> dict:
  """Applies predict_fn to images [N,...] in fixed-size batches (the last one padded with
  copies of its last image, so there is one compilation) and returns host arrays with
  leading dimension N, in the order of `images`."""
  chunks = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
    out = predict_fn(variables, sharding.put_global_batch(batch, mesh))
    # process_allgather: on several hosts each holds only its shard of the batch.
    out = multihost_utils.process_allgather(out, tiled=True)
    chunks.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
