"""Command line: python -m vqjax.main --config configs/mvtec_vq.py [--config.key=value ...]

Intentionally short: everything it does lives in importable, tested functions.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
import jax
from ml_collections import config_flags

from vqjax import config_checks, experiment
from vqjax.config_defaults import load_config_file

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-host: call jax.distributed.initialize() (coordinator and process ids from the "
    "cluster environment, e.g. SLURM, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (e.g. configs/mvtec_vq.py or configs/mvtec_vq.py:paper).",
    lock_config=True)


def _describe_unknown_overrides(argv) -> str:
  """Names the --config.<key> overrides whose key the config file does not define."""
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None and "--config" in argv[:-1]:
    config_arg = argv[argv.index("--config") + 1]
  if config_arg is None:
    return ""
  config = load_config_file(config_arg)
  problems = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        parent = ".".join(["config", *parts[:depth]])
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        problems.append(f"unknown config key {key!r} in {arg!r}; {parent} has: {known}")
        break
      node = node[part]
  return "\n".join(problems)


def parse_flags(argv):
  """absl's parser, with a readable error for overrides of keys the config lacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    print(f"error: {_describe_unknown_overrides(argv) or e}", file=sys.stderr)
  raise SystemExit(2)


def format_results(metrics_json: dict, variants) -> str:
  """Plain-text table of the headline metrics ('-' where the data has no pixel truth)."""
  rows = [(v, metrics_json[v]) for v in variants]
  rows += [(f"baseline {k}", r) for k, r in metrics_json["baselines"].items()]
  columns = [("pixel_auroc", "pixel_AUROC"), ("image_auroc", "image_AUROC"),
             ("au_pro", "AU-PRO"), ("image_accuracy", "image_acc@thr")]
  width = max(len(name) for name, _ in rows)
  fmt = lambda v: f"{'-':>15}" if v is None else f"{v:15.4f}"
  lines = [f"{'map':<{width}}" + "".join(f"{title:>15}" for _, title in columns)]
  lines += [f"{name:<{width}}" + "".join(fmt(r.get(k)) for k, _ in columns) for name, r in rows]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Our progress messages at INFO; libraries (orbax, absl) only when something is wrong.
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  vqjax_logger = logging.getLogger("vqjax")
  vqjax_logger.addHandler(handler)
  vqjax_logger.setLevel(logging.INFO)
  vqjax_logger.propagate = False
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/mvtec_vq.py")
  try:
    config_checks.validate_config(config)
  except config_checks.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  try:
    if config.data.category == "all":
      experiment.run_sweep(config)
      print(f"results in {experiment.resolve_workdir(config)}: results.md, results.csv")
      return
    metrics_json = experiment.run(config)
  except experiment.UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  variants = experiment.variant_names(metrics_json)
  workdir = experiment.resolve_workdir(config)
  print(format_results(metrics_json, variants))
  print(f"outputs in {workdir}: metrics.json, summary.md, overlays/, ROC/PRO curves"
        + (", eval_arrays.npz" if config.eval.save_arrays else ""))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
