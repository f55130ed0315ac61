"""Runs a trained method over a split and turns its maps into metrics (host side)."""
from __future__ import annotations


import jax
from jax.experimental import multihost_utils
import numpy as np

from vqjax import metrics, sharding


def make_predict_fn(method, mesh, fn=None):
  """Jitted (variables, images uint8 [B,H,W,C]) -> fn outputs (default method.predict),
  batch-sharded."""
  return jax.jit(fn or method.predict,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
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


def score_maps(maps: dict, split, eval_config, val_maps: dict | None = None) -> dict:
  """{name: test maps [N,H,W]} -> {name: metrics} for a labelled test split.

  Image metrics use the map reduced by eval.image_score. Pixel metrics use only the test
  images that have pixel ground truth (None when none has). Thresholded metrics use a
  threshold fitted on the maps of the normal validation images `val_maps` (never on test).
  """
  pixel_idx = np.flatnonzero(split.pixel_mask_available)
  has_pixel_truth = pixel_idx.size > 0 and split.masks[pixel_idx].any()
  results = {}
  for name, m in maps.items():
    scores = metrics.image_scores(m, eval_config.image_score)
    r = {"image_auroc": metrics.image_auroc(scores, split.labels),
         "image_f1_max": metrics.f1_max(scores, split.labels)[0],
         "pixel_auroc": None, "per_image_pixel_auroc": None, "au_pro": None, "pixel_f1_max": None}
    if has_pixel_truth:
      pm, pk = m[pixel_idx], split.masks[pixel_idx]
      r.update(pixel_auroc=metrics.pixel_auroc(pm, pk),
               per_image_pixel_auroc=metrics.per_image_pixel_auroc(pm, pk),
               au_pro=metrics.au_pro(pm, pk, eval_config.pro_fpr_limit),
               pixel_f1_max=metrics.pixel_f1_max(pm, pk)[0])
    if val_maps is not None:
      r.update(_thresholded_metrics(m, split, val_maps[name], eval_config,
                                    pixel_idx if has_pixel_truth else None))
    results[name] = r
  return results


def _thresholded_metrics(test_maps, split, val_maps, eval_config, pixel_idx) -> dict:
  """Metrics at a threshold fitted on normal validation maps (Wang et al. 2020 §4.2)."""
  if eval_config.threshold_protocol != "bergmann":
    raise ValueError(
        f"config.eval.threshold_protocol = {eval_config.threshold_protocol!r}: only 'bergmann' "
        "can be fitted here, since the validation split holds only normal images (no labels "
        "to fit 'f1_adaptive' on).")
  min_area = eval_config.min_defect_area
  threshold = metrics.bergmann_threshold(val_maps, min_area)
  decisions = metrics.image_decisions(test_maps, threshold, min_area)
  out = {"threshold": {"protocol": "bergmann", "value": threshold, "min_area": min_area},
         "image_accuracy": metrics.balanced_image_accuracy(decisions, split.labels),
         "image_f1": metrics.f1_at_threshold(decisions.astype(np.float64), split.labels, 0.5),
         "pixel_f1": None}
  if pixel_idx is not None:
    out["pixel_f1"] = metrics.pixel_f1_at_threshold(test_maps[pixel_idx], split.masks[pixel_idx],
                                                    threshold)
  return out
