"""Runs a trained method over a split and turns its maps into metrics (host side)."""
from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from vqjax import metrics, sharding


def make_predict_fn(method, mesh):
  """Jitted (variables, images uint8 [B,H,W,C]) -> method.predict outputs, batch-sharded."""

  def predict(variables, images_u8):
    return method.predict(variables, images_u8.astype(jnp.float32) / 255.0)

  return jax.jit(predict, in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=sharding.batch_sharded(mesh))


def predict_split(predict_fn, variables, images: np.ndarray, batch_size: int, mesh) -> dict:
  """Applies predict_fn to images [N,H,W,C] uint8 in fixed-size batches (last one padded,
  so there is one compilation) and returns host arrays with leading dimension N."""
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


def mean_image_baseline(train_images: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Trivial baseline: per-pixel L2 distance (over channels) to the mean training image.
  train_images, images uint8 [N,H,W,C] -> maps [N,H,W] float32."""
  mean_image = train_images.astype(np.float64).mean(axis=0) / 255.0
  diff = images.astype(np.float64) / 255.0 - mean_image
  return np.sqrt(np.sum(diff**2, axis=-1)).astype(np.float32)


def codebook_stats(indices: np.ndarray, num_codes: int) -> dict:
  """Fraction of codes used and perplexity of code frequencies over indices [N,h,w]."""
  counts = np.bincount(indices.reshape(-1), minlength=num_codes).astype(np.float64)
  p = counts / counts.sum()
  nz = p[p > 0]
  return {"fraction_used": float(np.mean(counts > 0)),
          "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))), "num_codes": num_codes}


def score_maps(maps: dict, split, image_score: str) -> dict:
  """{name: maps [N,H,W]} -> {name: {'pixel_auroc', 'image_auroc'}} on a labelled split."""
  results = {}
  for name, m in maps.items():
    scores = metrics.image_scores(m, image_score)
    results[name] = {"pixel_auroc": metrics.pixel_auroc(m, split.masks),
                     "image_auroc": metrics.image_auroc(scores, split.labels)}
  return results
