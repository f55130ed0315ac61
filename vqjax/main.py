"""Command line.

  train + evaluate: python -m vqjax.main --config configs/mvtec_vq.py [--config.key=value ...]
  predict:          python -m vqjax.main --mode=predict --workdir runs/... --images DIR --out DIR
  export:           python -m vqjax.main --mode=export --workdir runs/... --out DIR
  evaluate again:   python -m vqjax.main --mode=evaluate --workdir runs/... --out DIR \
                        [--set anomaly.key=value ...]

Intentionally short: everything it does lives in importable, tested functions.
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys
import traceback

from absl import app, flags
from absl import logging as absl_logging
import jax
from ml_collections import config_flags

from vqjax import config_checks, distributed, experiment
from vqjax.config_defaults import load_config_file
from vqjax.data.demo import default_cache_dir

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Several processes (hosts): jax.distributed with the process layout of the cluster "
    "(SLURM, Open MPI, Kubernetes, Cloud TPU) or of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
    "JAX_PROCESS_ID (see launch/).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100,
    "--distributed: seconds after which a silent (dead, preempted) process stops all others "
    "with an error naming it.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "predict", "export", "evaluate"],
    "train: train (or resume) and evaluate per --config. predict: score new images with the "
    "trained model of --workdir. export: write a self-contained jax.export artifact of it. "
    "evaluate: score the run's test split again with other anomaly.* / eval.* settings "
    "(--set), no training; metrics.json to --out.")
_WORKDIR = flags.DEFINE_string("workdir", None, "predict/export: workdir of a finished run.")
_IMAGES = flags.DEFINE_multi_string(
    "images", None, "predict: a folder (searched recursively), an image file or a glob; "
    "repeatable.")
_OUT = flags.DEFINE_string("out", None, "predict/export: output folder.")
_THRESHOLD = flags.DEFINE_multi_string(
    "threshold", None, "predict: variant=value, overriding the threshold stored with the model.")
_VARIANTS = flags.DEFINE_list("variants", None, "predict: maps to write (default: all).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None,
                                   "predict: images per batch (default: the run's eval.batch_size).")
_SET = flags.DEFINE_multi_string(
    "set", None, "evaluate: key=value for an anomaly.* or eval.* setting of the run's config, "
    "e.g. anomaly.ssim_window_size=5; repeatable.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu"],
                               "export: platforms the artifact runs on, e.g. cpu,cuda.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", "default",
    "Folder where compiled XLA programs are kept for later runs of the same programs (a rerun, "
    "a resumed run, the next category of a sweep with the same image shapes, --mode=evaluate): "
    "'default' = $JAX_COMPILATION_CACHE_DIR if set, else <vqjax cache dir>/xla; 'none' = off.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (e.g. configs/mvtec_vq.py or configs/mvtec_vq.py:paper).",
    lock_config=True)


def _describe_unknown_overrides(argv) -> str:
  """Names the --config.<key> overrides whose key the config file does not define."""
  config_arg = _config_arg(argv)
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


def _config_arg(argv) -> str | None:
  config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if config_arg is None and "--config" in argv[:-1]:
    config_arg = argv[argv.index("--config") + 1]
  return config_arg


def _one_line(message: str) -> str:
  """A config file's exception as absl reports it (with a traceback) -> its first and last
  lines, e.g. 'flag --config=...: Error whilst parsing config file: ValueError: unknown preset'."""
  lines = [line for line in str(message).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    return f"{lines[0]} {lines[-1].strip()}"
  return str(message)


def parse_flags(argv):
  """absl's parser, with readable one-line errors for a missing config file, a misspelt
  preset and overrides of keys the config lacks."""
  config_arg = _config_arg(argv)
  if config_arg is not None and not pathlib.Path(config_arg.partition(":")[0]).is_file():
    print(f"error: --config {config_arg}: no such file {config_arg.partition(':')[0]!r} "
          "(e.g. configs/mvtec_vq.py, configs/mvtec_vq.py:paper)", file=sys.stderr)
    raise SystemExit(2)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
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


def _several_processes() -> bool:
  return jax.distributed.is_initialized() and jax.process_count() > 1


def _fail(message: str, code: int) -> None:
  if _several_processes():
    message = f"process {jax.process_index()}: {message}"
  print(f"error: {message}", file=sys.stderr, flush=True)
  if _several_processes():
    # Not a normal exit: jax's shutdown barrier would wait for the other processes, which
    # wait in a collective for this one; without it they stop within --heartbeat_timeout.
    logging.shutdown()
    os._exit(code)
  raise SystemExit(code)


# Failures of a collective that mean a peer is gone, not a fault of this process.
_PEER_LOST = ("UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "Connection reset", "Connection "
              "refused", "Gloo", "heartbeat")


def _parse_settings(items) -> dict[str, str]:
  settings = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--set {item!r}: expected key=value, e.g. anomaly.am_dilation=3")
    settings[key.strip()] = value.strip()
  return settings


def _use_trained_model() -> None:
  """--mode=predict / --mode=export / --mode=evaluate."""
  from vqjax import predict  # local: training runs do not need it
  mode = _MODE.value
  if _SET.present and mode != "evaluate":
    raise app.UsageError("--set is only for --mode=evaluate")
  if mode == "evaluate":
    if not _WORKDIR.value or not _OUT.value:
      raise app.UsageError("--mode=evaluate needs --workdir and --out")
    metrics_json = experiment.reevaluate(_WORKDIR.value, _parse_settings(_SET.value), _OUT.value)
    print(format_results(metrics_json, experiment.variant_names(metrics_json)))
    print(f"metrics.json in {_OUT.value}")
    return
  if not _WORKDIR.value or not _OUT.value or (mode == "predict" and not _IMAGES.value):
    needed = "--workdir, --images and --out" if mode == "predict" else "--workdir and --out"
    raise app.UsageError(f"--mode={mode} needs {needed}")
  model = predict.load_model(_WORKDIR.value)
  if mode == "export":
    out = predict.export_model(model, _OUT.value, platforms=_PLATFORMS.value)
    print(f"exported to {out}: model.stablehlo, weights.npz, model.json "
          "(load with vqjax.exported.load_exported)")
    return
  rows = predict.predict_images(model, _IMAGES.value, _OUT.value,
                                thresholds=predict.parse_thresholds(_THRESHOLD.value),
                                variants=_VARIANTS.value, batch_size=_BATCH_SIZE.value)
  flagged = sum(bool(r["is_anomalous"]) for r in rows)
  print(f"{len(rows)} (image, variant) rows, {flagged} anomalous at the threshold; outputs in "
        f"{_OUT.value}: scores.csv, maps/, masks/, overlays/")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _main()
  except KeyboardInterrupt:
    # The trainer has saved what it could and said so; no traceback after that message.
    _fail("interrupted", 130)
  except (experiment.UserInputError, config_checks.ConfigError) as e:
    _fail(str(e), 2)
  except FloatingPointError as e:  # training diverged: the message says what to change
    _fail(str(e), 1)
  except jax.errors.JaxRuntimeError as e:
    if not _several_processes():
      raise
    first_line = str(e).strip().splitlines()[0][:300]
    if any(sign in str(e) for sign in _PEER_LOST):
      # A collective with a process that died (killed, preempted, out of memory) fails here,
      # unless the coordination service notices its silence first and ends this one itself.
      _fail(f"a collective with the other processes failed ({first_line}); another process "
            "has probably died or been stopped: see its log. Rerun the same command to "
            "resume from the last checkpoint.", 1)
    traceback.print_exc()  # this process's own failure (out of memory, a bug): the details
    _fail(first_line, 1)
  except OSError as e:  # unwritable workdir, a file where a folder should be, full disk...
    where = f" ({e.filename})" if e.filename else ""
    _fail(f"{e.strerror or e}{where}: check that the workdir / output folder is a writable "
          "folder", 1)


def compilation_cache_dir(setting: str) -> pathlib.Path | None:
  """The folder --compilation_cache names: None for 'none'; for 'default',
  $JAX_COMPILATION_CACHE_DIR if set, else <vqjax cache dir>/xla; else the path given."""
  if setting == "none":
    return None
  if setting != "default":
    return pathlib.Path(setting).expanduser()
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
  return default_cache_dir() / "xla"


def _main():
  # Our progress messages at INFO; libraries (orbax, absl) only when something is wrong.
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  vqjax_logger = logging.getLogger("vqjax")
  vqjax_logger.addHandler(handler)
  vqjax_logger.setLevel(logging.INFO)
  vqjax_logger.propagate = False
  # JAX's persistent cache keeps programs that took >= 1 s to compile: on a CPU, IGD's training
  # step compiles for minutes, and a sweep's next category with the same shapes reuses it.
  cache_dir = compilation_cache_dir(_COMPILATION_CACHE.value)
  if cache_dir is not None:
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  if _MODE.value != "train":
    if _DISTRIBUTED.value:
      raise app.UsageError(f"--mode={_MODE.value} runs in one process (all its local devices); "
                           "drop --distributed")
    return _use_trained_model()
  ignored = [f"--{f.name}" for f in (_WORKDIR, _IMAGES, _OUT, _THRESHOLD, _VARIANTS, _BATCH_SIZE,
                                     _SET) if f.present]
  if ignored:
    raise app.UsageError(f"{', '.join(ignored)}: only for --mode=predict/export/evaluate; "
                         "training takes its workdir from --config.workdir")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/mvtec_vq.py")
  if _DISTRIBUTED.value:  # before anything starts jax's backend (config checks do)
    distributed.initialize(heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value)
    # Every process logs (a failure may show on any one); the lines say which one wrote them.
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [process {jax.process_index()}/{jax.process_count()}] %(message)s",
        "%H:%M:%S"))
  config_checks.validate_config(config)
  primary = jax.process_index() == 0  # the one process that prints results (and writes them)
  if config.data.category == "all":
    per_category = experiment.run_sweep(config)
    if not primary:
      return
    if config.sweep.category_index >= 0 and not config.sweep.merge_only:
      [(category, metrics_json)] = per_category.items()
      print(format_results(metrics_json, experiment.variant_names(metrics_json)))
      print(f"category {category} done; once every category is, write the sweep's tables "
            "with --config.sweep.merge_only=True")
      return
    print(f"results in {experiment.resolve_workdir(config)}: results.md, results.csv")
    return
  metrics_json = experiment.run(config)
  variants = experiment.variant_names(metrics_json)
  workdir = experiment.resolve_workdir(config)
  if not primary:
    return
  print(format_results(metrics_json, variants))
  print(f"outputs in {workdir}: metrics.json, summary.md, overlays/, ROC/PRO curves, "
        "model.json + model.msgpack (for --mode=predict / export)"
        + (", eval_arrays.npz" if config.eval.save_arrays else ""))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
