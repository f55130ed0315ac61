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


def predict_split(predict_fn, variables, images, batch_size: int, mesh) -> dict:
  """Applies predict_fn to images [N,...] (an array, or images decoded on demand) in
  fixed-size batches (the last one padded with copies of its last image, so there is one
  compilation) and returns host arrays with leading dimension N, in the order of `images`.
  Each process reads only its rows of each batch."""
  chunks = []
  for start in range(0, len(images), batch_size):
    n = min(batch_size, len(images) - start)
    indices = np.minimum(np.arange(start, start + batch_size), start + n - 1)
    out = predict_fn(variables, sharding.put_process_batch(images, indices, mesh))
    # process_allgather: on several hosts each holds only its shard of the batch.
    out = multihost_utils.process_allgather(out, tiled=True)
    chunks.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)


def mean_image(images, batch_size: int) -> np.ndarray:
  """Mean [H,W,C] float64 in [0,1] of uint8 images [N,H,W,C] (an array, or images decoded on
  demand): each process sums its rows of each batch of `batch_size`, the exact integer sums
  are added across processes."""
  if images.dtype != np.uint8:
    raise TypeError(f"mean_image takes uint8 images, got {images.dtype}")
  local_sum = np.zeros(images.shape[1:], np.int64)
  for start in range(0, len(images), batch_size):
    rows = sharding.read_process_rows(
        images, np.arange(start, min(start + batch_size, len(images))), batch_size)
    local_sum += rows.astype(np.int64).sum(axis=0)
  if jax.process_count() > 1:
    # int32 is exact for fewer than 2^31 / 255 = 8.4M images of 8 bits.
    local_sum = np.asarray(multihost_utils.process_allgather(
        local_sum.astype(np.int32)), np.int64).sum(axis=0)
  return local_sum / (255.0 * len(images))
