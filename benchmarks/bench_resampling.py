"""Resampling-stage throughput (Wang et al. 2020 §3.3): exact schemes against the naive walk.

Uses a TRAINED latent-resampling run (its workdir) so the number of replaced codes is
realistic: the same command that trained it (same config and overrides) restores both
stages from their checkpoints, without training further (a workdir without checkpoints is
trained first, with that config). For each image set -- normal test images, defective test
images, and the test set as it is (the realistic mix) -- drawn with replacement up to
`--images` tables, and each batch size, it times the whole set through:

  naive     `resample_sequential` per batch: one prior pass per table position (+1);
  batched   `resample` per batch: 1 + changes passes, the batch runs until its slowest
            image is done (what `predict` does with anomaly.resample_slots = 0);
  refilled  `resample` over the whole set with slots = batch: a finished image's slot takes
            the next image (anomaly.resample_slots = batch).

All three must give the same codes (`exact`: `--naive-images` limits the slow naive walk, and
the comparison with it, to the first tables of each set; the two exact schemes are compared
on all tables). The JSON is rewritten after each row, so a run cut short keeps its rows.
`prior tables/img` counts the tables the prior ran on per image (iterations x slots /
images): it does not depend on the device, and the time follows it when the prior dominates.
Warm-up/compile is timed apart; medians over repeats.

  python -m benchmarks.bench_resampling --config configs/mvtec_vq_resample.py \
      --workdir runs/vqvae_resample_brick --batches 1,8 --repeats 5
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import environment, report
from vqjax import experiment
from vqjax.config_defaults import load_config_file
from vqjax.methods import get_method
from vqjax.ops.latent_resampling import resample, resample_sequential
from vqjax.report import write_json

MODES = ("naive", "batched", "refilled")


def _load_trained(config_arg: str, workdir: str):
  config = load_config_file(config_arg)
  config.workdir = workdir
  dataset, _ = experiment.load_data(config)
  method = get_method(config, dataset.num_channels)
  quiet = logging.getLogger("bench").info
  variables, _ = method.fit(config, dataset, pathlib.Path(workdir), log=quiet, show_progress=False)
  return config, dataset, method, variables


def _time(fn, repeats: int) -> tuple[float, float, object]:
  """(first-call seconds incl. compile, median steady-state seconds per call, output)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), out


def make_schemes(logits_fn, eta, local_constraint: bool, batch: int):
  """Jitted tables [N,h,w] (N a multiple of batch) -> (codes [N,h,w], prior tables run,
  passes [N] (the exact schemes; zeros for the naive walk))."""
  def per_batch(walk):
    def run(tables):
      chunks = tables.reshape(-1, batch, *tables.shape[1:])
      codes, tables_run, passes = jax.lax.map(walk, chunks)
      return codes.reshape(tables.shape), jnp.sum(tables_run), passes.reshape(-1)
    return jax.jit(run)

  def naive(chunk):
    size = chunk.shape[1] * chunk.shape[2]
    prior_calls = size + int(local_constraint)  # + the pass for the original constraint
    codes = resample_sequential(logits_fn, chunk, eta, local_constraint=local_constraint)
    return codes, jnp.int32(prior_calls * batch), jnp.zeros((batch,), jnp.int32)

  def batched(chunk):
    out = resample(logits_fn, chunk, eta, local_constraint=local_constraint)
    return out.tables, out.iterations * batch, out.passes

  @jax.jit
  def refilled(tables):
    out = resample(logits_fn, tables, eta, local_constraint=local_constraint, slots=batch)
    return out.tables, out.iterations * batch, out.passes

  return {"naive": per_batch(naive), "batched": per_batch(batched), "refilled": refilled}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mvtec_vq_resample.py")
  parser.add_argument("--workdir", required=True, help="workdir of a finished training run")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--images", type=int, default=64,
                      help="tables per image set (drawn with replacement; rounded down to a "
                           "multiple of each batch size)")
  parser.add_argument("--eta", type=float, default=None,
                      help="threshold to time at (default: the trained run's eta)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--naive-images", type=int, default=None, metavar="N",
                      help="time the naive walk (h*w + 1 prior passes per batch) on the first "
                           "N tables of each set only, at least one batch (default: all); the "
                           "two exact schemes are compared with each other on all tables")
  parser.add_argument("--out", default=None,
                      help="JSON output path (default: benchmarks/results/"
                           "resampling_<device>.json)")
  args = parser.parse_args(argv)
  argv = sys.argv[1:] if argv is None else argv

  config, dataset, method, variables = _load_trained(args.config, args.workdir)
  eta = variables["eta"] if args.eta is None else jnp.float32(args.eta)
  local = config.anomaly.local_constraint
  encode = jax.jit(method.vq.encode_indices)
  logits_fn = lambda tables: method.prior.logits(variables["prior"], tables)

  test = dataset.test
  sets = {"normal": test.images[test.labels == 0], "defective": test.images[test.labels == 1],
          "mix": test.images}
  set_tables = {}
  for set_name, images in sets.items():
    if len(images):
      draw = np.random.default_rng(0).choice(len(images), args.images, replace=True)
      set_tables[set_name] = np.concatenate(
          [np.asarray(encode(variables["vqvae"], images[draw[i:i + 16]]))
           for i in range(0, len(draw), 16)])

  jax_device = jax.devices()[0]
  device = f"{jax.device_count()} x {jax_device.device_kind}"
  out_path = pathlib.Path(args.out or f"benchmarks/results/resampling_"
                          f"{environment.device_slug(jax_device.device_kind)}.json")
  result = {"device": device, "environment": environment.collect(
                argv, jax_device, module="benchmarks.bench_resampling"),
            "config": args.config, "eta": float(eta), "local_constraint": local,
            "images_per_set": args.images, "repeats": args.repeats, "rows": []}
  rows = result["rows"]
  for batch in [int(b) for b in args.batches.split(",")]:
    n = args.images // batch * batch
    if n == 0:
      continue
    # Built once per batch size: every set has n tables, so the sets share the compiles.
    schemes = make_schemes(logits_fn, eta, local, batch)
    naive_count = n if not args.naive_images else min(n, max(batch, args.naive_images
                                                              // batch * batch))
    for set_name, all_tables in set_tables.items():
      tables = jnp.asarray(all_tables[:n])
      row = {"images": set_name, "num_images": n, "batch": batch,
             "table": list(all_tables.shape[1:]), "naive_checked_images": naive_count}
      codes = {}
      for mode in MODES:
        count = naive_count if mode == "naive" else n
        first, median, (out, tables_run, passes) = _time(
            lambda: schemes[mode](tables[:count]), args.repeats)
        codes[mode] = np.asarray(out)
        row[mode] = {"images_per_s": count / median, "median_s": median, "first_call_s": first,
                     "num_images": count, "prior_tables_per_image": int(tables_run) / count}
      # The naive walk (the definition) on the tables it ran on; the two exact schemes on all.
      row["exact"] = (all(np.array_equal(c[:naive_count], codes["naive"]) for c in codes.values())
                      and np.array_equal(codes["batched"], codes["refilled"]))
      passes = np.asarray(passes)  # the refilled run's, per image
      changed = np.sum(codes["refilled"] != all_tables[:n], axis=(1, 2))
      row.update(mean_passes=float(passes.mean()), max_passes=int(passes.max()),
                 changed_codes_per_image=float(changed.mean()))
      rows.append(row)
      write_json(out_path, result)  # atomic: a run cut short keeps its complete rows
      print(f"{set_name} batch {batch}: exact {row['exact']}, refilled "
            f"{row['refilled']['images_per_s']:.4g} img/s", flush=True)

  write_json(out_path, result)
  lines = [f"resampling stage, {device}, eta={float(eta):g}, local_constraint={local}, "
           f"{args.images} tables per set", *report.resampling_table(rows)]
  print("\n".join(lines))


if __name__ == "__main__":
  main()
