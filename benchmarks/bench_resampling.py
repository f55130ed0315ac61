"""Resampling-stage throughput (Wang et al. 2020 §3.3): exact fast scheme vs the naive walk.

Uses a TRAINED latent-resampling run (its workdir) so the number of replaced codes is
realistic: the same command that trained it (same config and overrides) restores both
stages from their checkpoints, without training further. Times, per image set (normal test
images, defective test images) and batch size, the exact fast scheme
(`ops.latent_resampling.resample`: 1 + changes passes) against the naive walk
(`resample_sequential`: one prior pass per table position), after checking both give the
same codes. Warm-up/compile is timed apart; medians over repeats; inputs rotate.

  python -m benchmarks.bench_resampling --config configs/mvtec_vq_resample.py \
      --workdir runs/vqvae_resample_brick --batches 1,8 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from vqjax import experiment
from vqjax.config_defaults import load_config_file
from vqjax.methods import get_method
from vqjax.ops.latent_resampling import resample, resample_sequential


def _load_trained(config_arg: str, workdir: str):
  config = load_config_file(config_arg)
  config.workdir = workdir
  dataset, _ = experiment.load_data(config)
  method = get_method(config, dataset.num_channels)
  quiet = logging.getLogger("bench").info
  variables, _ = method.fit(config, dataset, pathlib.Path(workdir), log=quiet, show_progress=False)
  return config, dataset, method, variables


def _time(fn, inputs: list, repeats: int) -> tuple[float, float]:
  """(first-call seconds incl. compile, median steady-state seconds per call)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(inputs[0]))
  first = time.perf_counter() - t0
  times = []
  for r in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(inputs[(r + 1) % len(inputs)]))
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mvtec_vq_resample.py")
  parser.add_argument("--workdir", required=True, help="workdir of a finished training run")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None, help="JSON output path")
  args = parser.parse_args(argv)

  config, dataset, method, variables = _load_trained(args.config, args.workdir)
  eta = variables["eta"]
  local = config.anomaly.local_constraint
  encode = jax.jit(method.vq.encode_indices)
  logits_fn = lambda tables: method.prior.logits(variables["prior"], tables)
  fast = jax.jit(lambda t: resample(logits_fn, t, eta, local_constraint=local))
  naive = jax.jit(lambda t: resample_sequential(logits_fn, t, eta, local_constraint=local))

  test = dataset.test
  sets = {"normal": test.images[test.labels == 0], "defective": test.images[test.labels == 1]}
  rows = []
  for set_name, images in sets.items():
    for batch in [int(b) for b in args.batches.split(",")]:
      if len(images) < batch:
        continue
      rng = np.random.default_rng(0)
      batches = [images[rng.choice(len(images), batch, replace=False)] for _ in range(3)]
      tables = [encode(variables["vqvae"], b) for b in batches]
      fast_tables, passes = fast(tables[0])
      exact = bool(np.array_equal(np.asarray(fast_tables), np.asarray(naive(tables[0]))))
      fast_first, fast_s = _time(fast, tables, args.repeats)
      naive_first, naive_s = _time(naive, tables, args.repeats)
      changed = int(np.sum(np.asarray(fast_tables) != np.asarray(tables[0])))
      rows.append({"images": set_name, "batch": batch, "exact": exact,
                   "mean_passes": float(np.mean(np.asarray(passes))),
                   "changed_codes_per_image": changed / batch,
                   "table": list(np.asarray(tables[0]).shape[1:]),
                   "fast_images_per_s": batch / fast_s, "naive_images_per_s": batch / naive_s,
                   "fast_first_call_s": fast_first, "naive_first_call_s": naive_first,
                   "speedup": naive_s / fast_s})
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  lines = [f"resampling stage, {device}, eta={float(eta):g}, local_constraint={local}",
           "| images | batch | exact | mean passes | changed codes/img | fast img/s | naive img/s | speed-up |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['images']} | {r['batch']} | {r['exact']} | {r['mean_passes']:.1f} | "
                 f"{r['changed_codes_per_image']:.1f} | {r['fast_images_per_s']:.2f} | "
                 f"{r['naive_images_per_s']:.2f} | {r['speedup']:.1f}x |")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {"device": device, "command": " ".join(sys.argv), "eta": float(eta), "rows": rows},
        indent=2) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
