"""One experiment end to end: data -> train -> maps -> metrics -> report, all from a config."""
from __future__ import annotations

import json
import logging
import pathlib
import time

import jax
import numpy as np

from vqjax import evaluate, report, sharding
from vqjax.data import demo, mvtec
from vqjax.methods import get_method
from vqjax.train import train

logger = logging.getLogger("vqjax")

# Keys that may change between a run and its resumption in the same workdir.
_RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.checkpoint_every",
                   "train.max_checkpoints", "eval", "workdir")


class UserInputError(ValueError):
  """Bad data folder or workdir: the message says which file/folder and what was expected."""


def resolve_workdir(config) -> pathlib.Path:
  """config.workdir with '{category}' and '{method}' filled in."""
  return pathlib.Path(config.workdir.format(category=config.data.category, method=config.method))


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
  return out


def check_workdir(workdir: pathlib.Path, config_dict: dict) -> None:
  """Refuses to resume a workdir whose checkpoints came from different settings."""
  saved_path = workdir / "config.json"
  if not saved_path.exists():
    return
  saved = _flatten(json.loads(saved_path.read_text()))
  current = _flatten(config_dict)
  changed = sorted(k for k in set(saved) | set(current)
                   if saved.get(k) != current.get(k)
                   and not any(k == r or k.startswith(r + ".") for r in _RESUMABLE_KEYS))
  if changed and (workdir / "checkpoints").exists():
    details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise UserInputError(f"workdir {workdir} holds checkpoints of a run with other settings "
                     f"({details}). Pass a new --config.workdir, or delete that folder to start over.")


def load_data(config) -> tuple[mvtec.Dataset, str]:
  if config.data.root is None:
    root = demo.ensure_demo_dataset()
    logger.info("data.root is unset: using the embedded demo dataset (synthetic defects on "
                "scikit-image texture photographs) at %s", root)
    if config.data.category not in demo.DEMO_CATEGORIES:
      raise UserInputError(f"config.data.category = {config.data.category!r} is not in the embedded "
                       f"demo data; choose one of {list(demo.DEMO_CATEGORIES)} or set data.root")
    source = f"embedded demo ({root})"
  else:
    root = pathlib.Path(config.data.root).expanduser()
    source = str(root)
  try:
    dataset = mvtec.load_mvtec(root, config.data.category, config.data.image_size,
                               val_fraction=config.data.val_fraction, seed=config.seed)
  except (FileNotFoundError, ValueError) as e:
    raise UserInputError(f"config.data.root / data.category: {e}") from e
  return dataset, source


def run(config, *, show_progress: bool = True) -> dict:
  """Trains and evaluates per `config`; writes outputs to the workdir; returns metrics.json."""
  workdir = resolve_workdir(config)
  config_dict = config.to_dict()
  check_workdir(workdir, config_dict)
  primary = jax.process_index() == 0  # multi-host: one process writes the outputs
  workdir.mkdir(parents=True, exist_ok=True)
  if primary:
    report.write_json(workdir / "config.json", config_dict)

  dataset, source = load_data(config)
  logger.info("category %s: %d train / %d val / %d test images (%d anomalous), %dx%dx%d",
              dataset.category, len(dataset.train), len(dataset.val), len(dataset.test),
              int(dataset.test.labels.sum()), *dataset.train.images.shape[1:])
  method = get_method(config, dataset.num_channels)
  t0 = time.perf_counter()
  variables, train_summary = train(config, method, dataset.train.images, workdir,
                                   log=logger.info, show_progress=show_progress)

  mesh = sharding.make_data_mesh()
  predict_fn = evaluate.make_predict_fn(method, mesh)
  t_eval = time.perf_counter()
  test = evaluate.predict_split(predict_fn, variables, dataset.test.images,
                                config.eval.batch_size, mesh)
  train_out = evaluate.predict_split(predict_fn, variables, dataset.train.images,
                                     config.eval.batch_size, mesh)
  val = (evaluate.predict_split(predict_fn, variables, dataset.val.images,
                                config.eval.batch_size, mesh) if len(dataset.val) else None)
  eval_seconds = time.perf_counter() - t_eval

  results = evaluate.score_maps(test["maps"], dataset.test, config.eval.image_score)
  baseline_maps = {"mean_image": evaluate.mean_image_baseline(dataset.train.images,
                                                              dataset.test.images)}
  baselines = evaluate.score_maps(baseline_maps, dataset.test, config.eval.image_score)
  run_info = {
      "method": config.method, "category": dataset.category, "data": source,
      "image_size": config.data.image_size,
      "num_images": {"train": len(dataset.train), "val": len(dataset.val),
                     "test": len(dataset.test),
                     "test_anomalous": int(dataset.test.labels.sum())},
      "steps": train_summary["steps"], "train_seconds": train_summary["train_seconds"],
      "compile_seconds": train_summary["compile_seconds"], "eval_seconds": eval_seconds,
      "total_seconds": time.perf_counter() - t0,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "image_score": config.eval.image_score,
  }
  if val is not None:
    # Statistics of maps on held-out normal images: where a threshold would come from.
    run_info["validation_map_quantiles"] = {
        v: {q: float(np.quantile(m, float(q))) for q in ("0.5", "0.99", "0.999")}
        for v, m in val["maps"].items()}
  if "indices" in train_out:
    run_info["codebook"] = evaluate.codebook_stats(train_out["indices"], config.model.num_codes)
  metrics_json = {**results, "baselines": baselines, "run": run_info, "config": config_dict}
  if not primary:
    return metrics_json
  report.write_json(workdir / "metrics.json", metrics_json)

  images = dataset.test.images.astype(np.float32) / 255.0
  overlay_idx = report.pick_overlay_indices(dataset.test.labels, config.eval.num_overlays)
  report.write_overlays(workdir / "overlays", images, test["reconstructions"], test["maps"],
                        dataset.test.masks, dataset.test.names, overlay_idx)
  if config.eval.save_arrays:
    report.save_arrays(workdir / "eval_arrays.npz", {
        "images": images, "reconstructions": test["reconstructions"],
        "masks": dataset.test.masks, "labels": dataset.test.labels,
        "names": np.asarray(dataset.test.names),
        **{f"map_{v}": m for v, m in test["maps"].items()}})
  report.write_text(workdir / "summary.md",
                    report.summary_markdown(results, list(method.variants), baselines, run_info))
  return metrics_json
