"""One experiment end to end: data -> train -> maps -> metrics -> report, all from a config."""
from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import contextvars
import fcntl
import json
import logging
import os
import pathlib
import queue
import socket
import threading
import time

import jax
import numpy as np

from vqjax import data, evaluate, inference, report, sharding, train
from vqjax.data.files import ImageFiles
from vqjax import predict as model_file
from vqjax.errors import UserInputError
from vqjax.methods import get_method
from vqjax.optimizers import DEFAULTS as optimizer_defaults

logger = logging.getLogger("vqjax")

# Keys that may change between a run and its resumption in the same workdir.
_RESUMABLE_KEYS = ("train.num_steps", "train.num_epochs", "train.log_every",
                   "train.checkpoint_every", "train.max_checkpoints", "eval", "workdir",
                   "sweep", "data.decode_cache_mb")
# Optimisation settings that may change on resume (in any training block: train, prior_train,
# kd_train): they change no parameter or optimizer-state shape, so a run that diverged can go
# on from its last good checkpoint at a lower rate.
_RESUMABLE_OPTIMISATION_KEYS = ("learning_rate", "end_learning_rate", "b1", "b2", "weight_decay",
                                "decay_power")
# Keys added after runs were written: a saved config without them ran as these values do
# (the optimizer keys at vqjax.optimizers' defaults, plain Adam; JSON-shaped, as saved).
_ADDED_KEY_DEFAULTS = json.loads(json.dumps({
    **{f"train.{k}": v for k, v in optimizer_defaults.items()},
    "model.architecture": "gangloff"}))


_NON_VARIANT_KEYS = ("baselines", "run", "config")


def variant_names(metrics_json: dict) -> list[str]:
  """The method's map variants among the top-level keys of a metrics.json."""
  return [k for k in metrics_json if k not in _NON_VARIANT_KEYS]


def resolve_workdir(config) -> pathlib.Path:
  """config.workdir with '{category}' and '{method}' filled in."""
  category = str(config.data.category).replace("/", "_")  # e.g. fashion_mnist/t-shirt/top
  return pathlib.Path(config.workdir.format(category=category, method=config.method))


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
  return out


def _flat_json(config_dict: dict) -> dict:
  """Flattened keys of a config dict as saved to JSON (tuples compare as lists)."""
  return _flatten(json.loads(json.dumps(config_dict)))


def _resumable(key: str) -> bool:
  if any(key == r or key.startswith(r + ".") for r in _RESUMABLE_KEYS):
    return True
  block, _, name = key.rpartition(".")
  return name in _RESUMABLE_OPTIMISATION_KEYS and block.endswith("train")


def check_workdir(workdir: pathlib.Path, config_dict: dict) -> None:
  """Refuses to resume a workdir whose checkpoints came from different settings; logs the
  optimisation settings that changed (allowed)."""
  saved_path = workdir / "config.json"
  if not saved_path.exists():
    return
  saved = _flatten(json.loads(saved_path.read_text()))
  current = _flat_json(config_dict)
  # A key added since: a run saved before it ran with its default. Only keys this config has
  # (FAVAE and IGD have no model.architecture).
  saved = {**{k: v for k, v in _ADDED_KEY_DEFAULTS.items() if k not in saved and k in current},
           **saved}
  differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  changed = [k for k in differ if not _resumable(k)]
  has_checkpoints = any(workdir.glob("**/checkpoints"))
  retuned = [k for k in differ if k not in changed and k.rpartition(".")[2]
             in _RESUMABLE_OPTIMISATION_KEYS]
  if retuned and has_checkpoints and not changed:
    logger.info("resuming with changed optimisation settings: %s", ", ".join(
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in retuned))
  if changed and has_checkpoints:
    details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
    raise UserInputError(f"workdir {workdir} holds checkpoints of a run with other settings "
                     f"({details}). Pass a new --config.workdir, or delete that folder to start over.")


def load_data(config) -> tuple[data.Dataset, str]:
  try:
    dataset, source = data.load_dataset(config.data, config.seed)
  except (FileNotFoundError, ValueError, ImportError) as e:
    raise UserInputError(f"config.data (dataset={config.data.dataset!r}, "
                         f"category={config.data.category!r}, root={config.data.root!r}): {e}") from e
  if config.data.root is None:
    logger.info("data.root is unset: using %s", source)
  return dataset, source


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path):
  """Holds an exclusive lock on <workdir>/.vqjax.lock for the run (process 0 of a multi-host
  run; the others write no outputs). A second run on the same workdir stops with the first
  one's pid instead of interleaving with it. The kernel drops the lock when its process dies,
  so a stale lock file never blocks."""
  if jax.process_index() != 0:
    yield
    return
  path = workdir / ".vqjax.lock"
  handle = open(path, "a+", encoding="utf-8")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise UserInputError(f"workdir {workdir} is in use by another vqjax run ({holder}); wait "
                         "for it to finish, or pass another --config.workdir") from None
  except OSError as e:  # a filesystem without flock (some Lustre/FUSE mounts): run unlocked
    logger.warning("WARNING: cannot lock %s (%s); two runs on this workdir would not be "
                   "stopped", path, e)
    handle.close()
    handle = None
  if handle is None:
    yield
    return
  try:
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    yield
  finally:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def run(config, *, show_progress: bool = True) -> dict:
  """Trains and evaluates per `config`; writes outputs to the workdir; returns metrics.json."""
  workdir = resolve_workdir(config)
  if workdir.exists() and not workdir.is_dir():
    raise UserInputError(f"config.workdir {workdir} is a file; expected a folder (new or of "
                         "an earlier run)")
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock(workdir):
    return _run_locked(config, workdir, show_progress)


def predict_splits(config, method, variables, dataset, mesh):
  """(test, val) outputs of method.predict over the test and validation images (val None
  when there are none), batch config.eval.batch_size sharded over `mesh`."""
  predict_fn = inference.make_predict_fn(method.predict, mesh)
  predict = lambda images: inference.predict_split(predict_fn, variables, images,
                                                   config.eval.batch_size, mesh)
  test = predict(dataset.test.images)
  return test, predict(dataset.val.images) if len(dataset.val) > 0 else None


def score_splits(config, dataset, test, val):
  """(results, baselines, baseline test maps): the metrics of the method's maps and of the
  mean-image baseline's, thresholds from the validation maps."""
  has_val = val is not None
  results = evaluate.score_maps(test["maps"], dataset.test, config.eval,
                                val["maps"] if has_val else None, scores=test.get("scores"))
  train_mean = inference.mean_image(dataset.train.images, config.eval.batch_size)
  baseline = lambda split: {"mean_image": evaluate.mean_image_baseline(train_mean, split.images)}
  baseline_test = baseline(dataset.test)
  baselines = evaluate.score_maps(baseline_test, dataset.test, config.eval,
                                  baseline(dataset.val) if has_val else None)
  return results, baselines, baseline_test


def _data_facts(config, dataset, source: str) -> dict:
  """What a metrics.json's run block starts with: method, data and the evaluated image size."""
  return {"method": config.method, "dataset": config.data.dataset, "category": dataset.category,
          "data": source, "image_size": int(dataset.test.images.shape[1])}  # as evaluated


# --mode=evaluate may change these blocks only: what the maps and the metrics are computed
# with, never what was trained.
REEVALUATE_BLOCKS = ("anomaly", "eval")


def _apply_setting(config, key: str, text: str) -> None:
  """Sets config's `key` to `text` read as the type of its current value (UserInputError for
  a key outside REEVALUATE_BLOCKS or a value of another type)."""
  block, _, name = key.partition(".")
  if block not in REEVALUATE_BLOCKS or not name or name not in config[block]:
    known = ", ".join(f"{b}.{k}" for b in REEVALUATE_BLOCKS for k in sorted(config[b]))
    raise UserInputError(f"--set {key}: not a setting --mode=evaluate can change; expected one "
                         f"of {known}")
  current = config[block][name]
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text  # a bare word: a string
  if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
    value = type(current)(value)
  expected = type(current)
  if current is None:
    ok = True
  elif expected is bool:
    ok = isinstance(value, bool)
  elif expected is float:  # an int is a float setting's value too (3 -> 3.0)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  else:
    ok = isinstance(value, expected) and not isinstance(value, bool)
  if not ok:
    raise UserInputError(f"--set {key}={text}: expected a {expected.__name__} like the run's "
                         f"{current!r}")
  config[block][name] = float(value) if expected is float else value


def reevaluate(workdir, settings: dict[str, str], out_dir) -> dict:
  """Scores a finished run's trained model again with other map or evaluation settings
  (`settings`: 'anomaly.<key>' / 'eval.<key>' -> value text), without training: the same
  prediction and scoring as the run's own evaluation. Writes metrics.json to out_dir (never
  into the run's workdir) and returns it."""
  from vqjax import config_checks  # local: it imports the methods, which import this module
  workdir, out_dir = pathlib.Path(workdir), pathlib.Path(out_dir)
  if out_dir.resolve() == workdir.resolve():
    raise UserInputError(f"--out {out_dir} is the run's workdir: choose another folder (the "
                         "run's metrics.json stays as it was evaluated)")
  model = model_file.load_model(workdir)
  config = model_file.model_config(model.info)
  for key, text in settings.items():
    _apply_setting(config, key, text)
  config_checks.validate_config(config)
  dataset, source = load_data(config)
  method = get_method(config, dataset.num_channels)
  mesh = sharding.make_data_mesh()
  t_eval = time.perf_counter()
  test, val = predict_splits(config, method, model.variables, dataset, mesh)
  results, baselines, _ = score_splits(config, dataset, test, val)
  run_info = {**_data_facts(config, dataset, source), "reevaluated_workdir": str(workdir), "settings": dict(settings),
              "steps": model.info.get("steps"), "eval_seconds": time.perf_counter() - t_eval,
              "image_score": config.eval.image_score}
  metrics_json = {**results, "baselines": baselines, "run": run_info, "config": config.to_dict()}
  out_dir.mkdir(parents=True, exist_ok=True)
  report.write_json(out_dir / "metrics.json", metrics_json)
  return metrics_json


def _run_locked(config, workdir: pathlib.Path, show_progress: bool) -> dict:
  config_dict = config.to_dict()
  check_workdir(workdir, config_dict)
  primary = jax.process_index() == 0  # multi-host: one process writes the outputs
  if primary:
    report.write_json(workdir / "config.json", config_dict)

  dataset, source = load_data(config)
  logger.info("category %s: %d train / %d val / %d test images (%d anomalous), %dx%dx%d",
              dataset.category, len(dataset.train), len(dataset.val), len(dataset.test),
              int(dataset.test.labels.sum()), *dataset.train.images.shape[1:])
  method = get_method(config, dataset.num_channels)
  t0 = time.perf_counter()
  variables, train_summary = method.fit(config, dataset, workdir, log=logger.info,
                                        show_progress=show_progress)

  mesh = sharding.make_data_mesh()
  t_eval = time.perf_counter()
  test, val = predict_splits(config, method, variables, dataset, mesh)
  has_val = val is not None
  method_info = method.run_info(variables, dataset, train_summary,
                                batch_size=config.eval.batch_size, mesh=mesh)
  eval_seconds = time.perf_counter() - t_eval
  results, baselines, baseline_test = score_splits(config, dataset, test, val)
  train_images = dataset.train.images
  if isinstance(train_images, ImageFiles):
    logger.info("training images: this process decoded %d of %d files (%d decodes, training "
                "and the passes over them), keeps %d decoded (%.0f MB; data.decode_cache_mb)",
                len(train_images.decoded_files),
                len(train_images), train_images.decoded, train_images.cached,
                train_images.cached * np.prod(train_images.shape[1:]) / 2**20)

  run_info = {
      **_data_facts(config, dataset, source),
      "num_images": {"train": len(dataset.train), "val": len(dataset.val),
                     "test": len(dataset.test),
                     "test_anomalous": int(dataset.test.labels.sum()),
                     "test_with_pixel_truth": int(dataset.test.pixel_mask_available.sum())},
      "steps": train_summary["steps"], "train_seconds": train_summary["train_seconds"],
      "compile_seconds": train_summary["compile_seconds"], "eval_seconds": eval_seconds,
      "total_seconds": time.perf_counter() - t0,
      "devices": f"{mesh.size} x {mesh.devices.flat[0].device_kind}",
      "device_ids": [int(d.id) for d in mesh.devices.flat],
      "image_score": config.eval.image_score,
  }
  if has_val:
    # Statistics of maps on held-out normal images: where thresholds come from.
    run_info["validation_map_quantiles"] = {
        v: {q: float(np.quantile(m, float(q))) for q in ("0.5", "0.99", "0.999")}
        for v, m in val["maps"].items()}
  frozen = {str(p.parent.relative_to(workdir)): json.loads(p.read_text())
            for p in sorted(workdir.glob("**/frozen.json"))}  # written by the trainer
  if frozen:
    run_info["frozen_weights"] = frozen  # source and checksum of pretrained inputs, per stage
  run_info["method_info"] = sorted(method_info)  # which keys below the method added
  run_info.update(method_info)
  metrics_json = {**results, "baselines": baselines, "run": run_info, "config": config_dict}
  if not primary:
    return metrics_json
  report.write_json(workdir / "metrics.json", metrics_json)
  # What `predict` and `export` load: the variables evaluated here, with their thresholds.
  model_file.write_model(workdir, config, method, variables, metrics_json,
                         image_size=run_info["image_size"], num_channels=dataset.num_channels,
                         method_scores=test.get("scores", {}))

  images = inference.to_unit_range_host(dataset.test.images)
  reconstructions = test.get("reconstructions")  # not every method has image-space ones
  overlay_idx = report.pick_overlay_indices(dataset.test.labels, config.eval.num_overlays)
  report.write_overlays(workdir / "overlays", images, reconstructions, test["maps"],
                        dataset.test.masks, dataset.test.names, overlay_idx)
  report.write_curves(workdir, {**test["maps"], **{f"baseline {k}": m
                                                   for k, m in baseline_test.items()}},
                      dataset.test, config.eval)
  if config.eval.save_arrays:
    report.save_arrays(workdir / "eval_arrays.npz", {
        "images": images, "masks": dataset.test.masks, "labels": dataset.test.labels,
        "has_mask": dataset.test.pixel_mask_available,
        "names": np.asarray(dataset.test.names),
        **({} if reconstructions is None else {"reconstructions": reconstructions}),
        **{f"map_{v}": m for v, m in test["maps"].items()},
        **{f"score_{v}": s for v, s in test.get("scores", {}).items()}})
  report.write_text(workdir / "summary.md",
                    report.summary_markdown(results, list(method.variants), baselines, run_info))
  return metrics_json


def _category_config(config, category: str):
  category_config = config.copy_and_resolve_references()
  with category_config.unlocked():
    category_config.data.category = category
  return category_config


# What differs between a sweep's config and each category's run by construction.
_SWEEP_OWN_KEYS = ("data.category", "workdir", "sweep.", "data.decode_cache_mb")


def _finished_metrics(config, categories) -> dict[str, dict]:
  """metrics.json of every category's workdir (sweep.merge_only); one error naming every
  category whose run has not finished."""
  per_category, missing, other_settings = {}, [], []
  expected = _flat_json(config.to_dict())
  for category in categories:
    path = resolve_workdir(_category_config(config, category)) / "metrics.json"
    if not path.exists():
      missing.append(f"{category} ({path})")
      continue
    per_category[category] = json.loads(path.read_text())
    saved = _flatten(per_category[category].get("config", {}))
    differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k)
                    and not k.startswith(_SWEEP_OWN_KEYS))
    if differ:
      other_settings.append(f"{category} ({', '.join(f'{k}: {saved.get(k)!r}' for k in differ)})")
  if other_settings:
    raise UserInputError(f"sweep.merge_only: runs made with other settings than this config: "
                         f"{'; '.join(other_settings)}. Merge with the config they ran with, or "
                         "rerun them.")
  if missing:
    raise UserInputError(f"sweep.merge_only: {len(missing)} of {len(categories)} categories have "
                         f"no finished run: {', '.join(missing)}. Run them (e.g. "
                         "sweep.category_index=<i> per category), then merge again.")
  return per_category


# The category a per-device sweep thread runs, put before its log lines (they interleave).
_log_category: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vqjax_log_category", default=None)


class _CategoryTag(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    category = _log_category.get()
    if category is not None:
      record.msg = f"[{category}] {record.msg}"
    return True


def _run_per_device(config, categories, show_progress: bool) -> dict[str, dict]:
  """One category per local device at a time, each in a thread whose runs see only that
  device (compiled steps release the GIL, so the devices work at once)."""
  if jax.process_count() > 1:
    raise UserInputError("sweep.parallel=per_device runs in one process (one category per "
                         "local device); on a cluster use one job-array task per category "
                         "(launch/slurm_sweep.sbatch)")
  free_devices = queue.Queue()
  for device in jax.local_devices():
    free_devices.put(device)
  logger.info("sweep: %d categories, %d at a time (one per device)", len(categories),
              free_devices.qsize())

  stop = threading.Event()  # set on a failure or Ctrl-C: running categories stop and save

  def run_one(category):
    if stop.is_set():  # queued behind a failure: not started
      return None
    device = free_devices.get()
    tag_token = _log_category.set(category)
    try:
      logger.info("category %s: on %s", category, device)
      with sharding.run_on([device]), train.stop_when(stop):
        # Progress bars of concurrent runs would overwrite each other: log lines only.
        return run(_category_config(config, category), show_progress=False)
    except Exception as error:
      stop.set()  # here, before this thread takes the next queued category
      logger.error("category %s failed: %s", category, error)
      raise
    finally:
      _log_category.reset(tag_token)
      free_devices.put(device)

  pool = concurrent.futures.ThreadPoolExecutor(free_devices.qsize(),
                                               thread_name_prefix="vqjax-sweep")
  tag = _CategoryTag()
  logger.addFilter(tag)
  futures = {category: pool.submit(run_one, category) for category in categories}
  try:
    for future in concurrent.futures.as_completed(futures.values()):
      if future.exception() is not None:  # the first failure stops the sweep, as serially
        stop.set()
        break
  except BaseException:  # Ctrl-C, which only the main thread receives
    stop.set()
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)  # running ones save their step and stop
    logger.removeFilter(tag)
  errors = [f.exception() for f in futures.values()
            if not f.cancelled() and f.exception() is not None]
  # The failure itself, not the interruptions it caused in the categories beside it.
  failures = [e for e in errors if not isinstance(e, KeyboardInterrupt)]
  if failures or errors:
    raise (failures or errors)[0]
  return {category: future.result() for category, future in futures.items()}


def run_sweep(config, *, show_progress: bool = True) -> dict[str, dict]:
  """data.category = 'all': one run per category (each in its own workdir), then
  results.md / results.csv in the workdir named with category 'all'. config.sweep chooses
  serial or per-device runs, one category of the list (a job-array task) or only the merge
  of finished runs."""
  try:
    categories = data.categories(config.data)
  except FileNotFoundError as e:
    raise UserInputError(f"config.data.root: {e}") from e
  sweep = config.sweep
  if sweep.category_index >= 0 and not sweep.merge_only:
    if sweep.category_index >= len(categories):
      raise UserInputError(f"config.sweep.category_index={sweep.category_index}: there are "
                           f"{len(categories)} categories (0..{len(categories) - 1}): "
                           f"{', '.join(categories)}")
    category = categories[sweep.category_index]
    logger.info("sweep task %d/%d: %s (merge the sweep with sweep.merge_only=True once every "
                "task has finished)", sweep.category_index, len(categories), category)
    return {category: run(_category_config(config, category), show_progress=show_progress)}
  if sweep.merge_only:
    per_category = _finished_metrics(config, categories)
  elif sweep.parallel == "per_device":
    per_category = _run_per_device(config, categories, show_progress)
  else:
    per_category = {}
    for i, category in enumerate(categories):
      logger.info("category %d/%d: %s", i + 1, len(categories), category)
      per_category[category] = run(_category_config(config, category),
                                   show_progress=show_progress)
  sweep_dir = resolve_workdir(config)
  if jax.process_index() == 0:
    variants = variant_names(next(iter(per_category.values())))
    md, csv = report.results_tables(per_category, variants, config.data.dataset)
    title = (f"# {config.method} on {config.data.dataset} ({len(categories)} categories)\n\n"
             f"One row per category (each run in its own workdir), mean row last; paper columns "
             f"are the published numbers of the method's paper where they exist "
             f"(vqjax/paper_results.py).\n\n")
    report.write_text(sweep_dir / "results.md", title + md)
    report.write_text(sweep_dir / "results.csv", csv)
  return per_category
