"""Using a trained model: the model file a run leaves in its workdir, `predict` on new images,
and `export` to a self-contained artifact (vqjax.exported loads it with jax + numpy alone).

A run writes <workdir>/model.msgpack (the variables `predict` reads, the same ones evaluation
used) and <workdir>/model.json (method, config, image size, channels, variants, and what
evaluation fitted on the validation split: the Bergmann threshold per variant and map
quantiles). So the threshold travels with the model; a user may override it.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import logging
import pathlib
import shutil
import tempfile

import flax.serialization
import jax
import ml_collections
import numpy as np
import tqdm
from PIL import Image

from vqjax import decisions, image_files, inference, report, sharding
from vqjax.errors import UserInputError
from vqjax.methods import get_method

logger = logging.getLogger("vqjax")

MODEL_FORMAT = "vqjax-model/1"
EXPORT_FORMAT = "vqjax-export/1"
EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
MODEL_JSON, MODEL_VARIABLES = "model.json", "model.msgpack"
PREPROCESSING = ("decode with Pillow; 16-bit grey scaled to 8 bits; converted to 'L' (1 channel) "
                 "or 'RGB' (3 channels, alpha dropped); bilinear resize to image_size x image_size; "
                 "uint8 [B,H,W,C] in, scaled to [0,1] inside the model")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  method: object
  variables: dict
  info: dict      # model.json
  workdir: pathlib.Path


# --- the model file a run writes -------------------------------------------------------------


def model_info(config, method, metrics_json: dict, *, image_size: int, num_channels: int,
               method_scores, variables_sha256: str) -> dict:
  """model.json: what predict and export need besides the variables."""
  run = metrics_json["run"]
  thresholds = {v: metrics_json[v].get("threshold") for v in method.variants}
  return {
      "format": MODEL_FORMAT, "method": config.method, "variants": list(method.variants),
      "image_size": image_size, "num_channels": num_channels, "preprocessing": PREPROCESSING,
      "image_score": config.eval.image_score,
      "method_scores": sorted(method_scores),  # variants scored by the method itself
      # Bergmann thresholds fitted on the normal validation maps (None: no validation split).
      "thresholds": {v: t for v, t in thresholds.items() if t is not None} or None,
      "map_quantiles": run.get("validation_map_quantiles"),
      "category": run["category"], "dataset": run["dataset"], "steps": run["steps"],
      "variables_sha256": variables_sha256, "config": metrics_json["config"],
  }


def write_model(workdir: pathlib.Path, config, method, variables, metrics_json: dict, *,
                image_size: int, num_channels: int, method_scores=()) -> None:
  """Writes model.msgpack then model.json, each atomically; model.json names the checksum of
  the variables it goes with, so a half-updated pair is detected on load."""
  data = flax.serialization.msgpack_serialize(jax.device_get(variables))
  with report.atomic_path(workdir / MODEL_VARIABLES) as tmp:
    tmp.write_bytes(data)
  info = model_info(config, method, metrics_json, image_size=image_size,
                    num_channels=num_channels, method_scores=method_scores,
                    variables_sha256=hashlib.sha256(data).hexdigest())
  report.write_json(workdir / MODEL_JSON, info)


def _as_tuples(value):
  """JSON lists back to the tuples configs use (hashable method fields)."""
  if isinstance(value, dict):
    return {k: _as_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_as_tuples(v) for v in value)
  return value


def model_config(info: dict) -> ml_collections.ConfigDict:
  """The run's config as saved in its model.json (tuples restored)."""
  return ml_collections.ConfigDict(_as_tuples(info["config"]))


def load_model(workdir) -> TrainedModel:
  """The trained model of a workdir; UserInputError naming the file when it is missing or
  does not match."""
  workdir = pathlib.Path(workdir)
  info_path, variables_path = workdir / MODEL_JSON, workdir / MODEL_VARIABLES
  if not workdir.is_dir():
    raise UserInputError(f"--workdir {workdir} is not a folder (pass the workdir of a "
                         "finished training run, e.g. runs/vqvae_ssim_bottle)")
  if not info_path.is_file() or not variables_path.is_file():
    hint = (" It holds checkpoints: rerun its training command to finish and evaluate it, "
            "which writes the model file." if (workdir / "checkpoints").is_dir() else "")
    raise UserInputError(f"{workdir} holds no trained model ({MODEL_JSON} and "
                         f"{MODEL_VARIABLES} are written when a run has evaluated).{hint}")
  try:
    info = json.loads(info_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserInputError(f"{info_path} is not valid JSON ({e}); rerun the training command "
                         "to rewrite it") from e
  if info.get("format") != MODEL_FORMAT:
    raise UserInputError(f"{info_path}: format {info.get('format')!r}, expected {MODEL_FORMAT!r}")
  data = variables_path.read_bytes()
  if hashlib.sha256(data).hexdigest() != info["variables_sha256"]:
    raise UserInputError(f"{variables_path} does not match the checksum in {info_path} (an "
                         "interrupted write?); rerun the training command to rewrite both")
  method = get_method(model_config(info), info["num_channels"])
  variables = flax.serialization.msgpack_restore(data)
  return TrainedModel(method=method, variables=variables, info=info, workdir=workdir)


# --- predict ---------------------------------------------------------------------------------


def collect_images(inputs) -> list[tuple[pathlib.Path, str]]:
  """(file, output name) for each image named by `inputs`: folders (searched recursively),
  files, or glob patterns. Output names are paths relative to the folder given (file names
  for files and globs), made unique."""
  found, seen = [], set()
  for spec in inputs:
    path = pathlib.Path(spec).expanduser()
    if path.is_dir():
      files = sorted(p for p in path.rglob("*") if image_files.is_image_file(p))
      items = [(p, p.relative_to(path).as_posix()) for p in files]
    elif path.is_file():
      if not image_files.is_image_file(path):
        raise UserInputError(f"--images {spec!r}: not an image file (extensions "
                             f"{sorted(image_files.IMAGE_EXTENSIONS)})")
      items = [(path, path.name)]
    else:
      matches = sorted(pathlib.Path(p) for p in glob.glob(str(path), recursive=True))
      items = [(p, p.name) for p in matches if image_files.is_image_file(p)]
    if not items:
      raise UserInputError(f"--images {spec!r}: no image files there (a folder, a file or a glob "
                           f"of {sorted(image_files.IMAGE_EXTENSIONS)})")
    for file, name in items:
      stem, k = name.rsplit(".", 1)[0], 1
      unique = stem
      while unique in seen:
        unique, k = f"{stem}-{k}", k + 1
      seen.add(unique)
      found.append((file, unique))
  return found


def resolve_thresholds(info: dict, overrides: dict[str, float] | None) -> dict[str, float | None]:
  """{variant: threshold}: the stored Bergmann threshold, replaced by user overrides."""
  stored = {v: (info["thresholds"] or {}).get(v, {}).get("value") for v in info["variants"]}
  for v, value in (overrides or {}).items():
    if v not in stored:
      raise UserInputError(f"--threshold names variant {v!r}; this model's variants are "
                           f"{info['variants']}")
    stored[v] = float(value)
  return stored


def _resize(array: np.ndarray, width: int, height: int, resample) -> np.ndarray:
  """A float32 map (mode 'F') or a uint8 mask (mode 'L') at another size, its dtype kept."""
  if array.shape == (height, width):
    return array
  return np.asarray(Image.fromarray(array).resize((width, height), resample), array.dtype)


def _colour_range(info: dict, variant: str, threshold, amap) -> tuple[float, float]:
  """Overlay colour scale: validation median (blue) .. threshold (red), or the validation
  0.999 quantile without a threshold, or the image's own 1..99.9 percentiles without either."""
  q = (info.get("map_quantiles") or {}).get(variant)
  if q is not None:
    hi = threshold if threshold is not None else q["0.999"]
    return float(q["0.5"]), float(hi)
  return float(np.percentile(amap, 1)), float(np.percentile(amap, 99.9))


def predict_images(model: TrainedModel, inputs, out_dir, *, thresholds=None, variants=None,
                   batch_size: int | None = None, show_progress: bool = True) -> list[dict]:
  """Scores every image named by `inputs` and writes to out_dir, per variant:
  maps/<variant>/<name>.npy (float32 anomaly map at the image's own size, higher = more
  anomalous, the method's units), masks/<variant>/<name>.png (0/255: the model-size map at
  the threshold, nearest-resized; image scores and decisions are made at the model's size),
  overlays/<variant>/<name>.png, and scores.csv + predict.json. Returns the csv rows."""
  info, out_dir = model.info, pathlib.Path(out_dir)
  variants = list(variants or info["variants"])
  unknown = sorted(set(variants) - set(info["variants"]))
  if unknown:
    raise UserInputError(f"--variants {unknown}: this model's variants are {info['variants']}")
  thresholds = resolve_thresholds(info, thresholds)
  items = collect_images(inputs)
  mesh = sharding.make_data_mesh()
  if batch_size is None:  # the run's, rounded up to a multiple of this machine's devices
    batch_size = -(-model.info["config"]["eval"]["batch_size"] // jax.device_count()) * (
        jax.device_count())
  if batch_size < 1 or batch_size % jax.device_count():
    raise UserInputError(f"--batch_size {batch_size}: must be a positive multiple of the device "
                         f"count ({jax.device_count()})")
  predict_fn = inference.make_predict_fn(model.method.predict, mesh)
  size, channels = info["image_size"], info["num_channels"]
  rows = []
  chunk = batch_size * max(1, 64 // batch_size)  # files decoded at once: bounded host memory
  progress = tqdm.tqdm(total=len(items), desc="predict", unit="img", disable=not show_progress)
  for start in range(0, len(items), chunk):
    part = items[start:start + chunk]
    try:
      pil_images = [image_files.read_image(f) for f, _ in part]
    except ValueError as e:  # names the file
      raise UserInputError(f"--images: {e}") from e
    batch = np.stack([image_files.image_array(im, channels, size) for im in pil_images])
    out = inference.predict_split(predict_fn, model.variables, batch, batch_size, mesh)
    per_variant = decisions.image_outputs(info, {v: out["maps"][v] for v in variants},
                                out.get("scores", {}), thresholds)
    for i, ((file, name), pil) in enumerate(zip(part, pil_images)):
      width, height = pil.size
      original = np.asarray(image_files.display_rgb(pil), np.float32) / 255.0
      for v in variants:
        score, anomalous = per_variant[v]
        model_map = np.asarray(out["maps"][v][i])
        amap = _resize(model_map.astype(np.float32), width, height, Image.Resampling.BILINEAR)
        _save_npy(out_dir / "maps" / v / f"{name}.npy", amap)
        if thresholds[v] is not None:
          # Thresholded at the model's size, where scores and decisions are made, then
          # nearest-resized: the mask agrees with is_anomalous (a bilinear map would not).
          mask = (model_map >= thresholds[v]).astype(np.uint8) * 255
          _save_png(out_dir / "masks" / v / f"{name}.png",
                    _resize(mask, width, height, Image.Resampling.NEAREST))
        lo, hi = _colour_range(info, v, thresholds[v], amap)
        overlay = report.heat_overlay(original, amap, lo, hi)
        _save_png(out_dir / "overlays" / v / f"{name}.png",
                  np.clip(overlay * 255 + 0.5, 0, 255).astype(np.uint8))
        rows.append({"file": str(file), "variant": v, "image_score": float(score[i]),
                     "threshold": thresholds[v],
                     "is_anomalous": None if anomalous is None else bool(anomalous[i]),
                     "map": f"maps/{v}/{name}.npy"})
    progress.update(len(part))
  progress.close()
  _write_csv(out_dir / "scores.csv", rows)
  report.write_json(out_dir / "predict.json", {
      "workdir": str(model.workdir), "method": info["method"], "variants": variants,
      "thresholds": thresholds, "stored_thresholds": info["thresholds"],
      "num_images": len(items), "image_size": size,
      "maps": "float32 .npy at each image's own size (bilinear from the model's "
              f"{size}x{size} map); the method's units, higher = more anomalous",
      "overlays": "jet colours from the validation median (blue) to the threshold (red)"})
  return rows


def _save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  with report.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, array)


def _save_png(path: pathlib.Path, array: np.ndarray) -> None:
  with report.atomic_path(path) as tmp:
    Image.fromarray(array).save(tmp, format="PNG")


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, ["file", "variant", "image_score", "threshold", "is_anomalous",
                                 "map"], lineterminator="\n")
  writer.writeheader()
  writer.writerows({**r, "threshold": "" if r["threshold"] is None else r["threshold"],
                    "is_anomalous": "" if r["is_anomalous"] is None else int(r["is_anomalous"])}
                   for r in rows)
  report.write_text(path, text.getvalue())


# --- export ----------------------------------------------------------------------------------


def export_model(model: TrainedModel, out_dir, *, platforms=("cpu",)) -> pathlib.Path:
  """Writes a self-contained inference artifact to out_dir (written to a staging folder
  first; an earlier export there is swapped out only once the new one is complete):
  model.stablehlo (jax.export, batch dimension symbolic), weights.npz (the variables as
  arrays, in the exported function's argument order) and model.json (preprocessing, image
  size, variants, thresholds, image-score rule). vqjax.exported.load_exported runs it with
  jax + numpy alone."""
  from jax import export as jax_export  # local: only export needs it
  info, out_dir = model.info, pathlib.Path(out_dir)
  method = model.method

  def maps_and_scores(variables, images):
    prediction = method.predict(variables, images)
    return {"maps": prediction["maps"], "scores": prediction.get("scores", {})}

  batch, = jax_export.symbolic_shape("batch")
  size, channels = info["image_size"], info["num_channels"]
  spec = jax.ShapeDtypeStruct((batch, size, size, channels), np.uint8)
  weight_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                              model.variables)
  platforms = tuple(platforms)
  if not platforms or not set(platforms) <= set(EXPORT_PLATFORMS):
    raise UserInputError(f"--platforms {list(platforms)}: expected one or more of "
                         f"{list(EXPORT_PLATFORMS)}")
  try:
    exported = jax_export.export(jax.jit(maps_and_scores), platforms=platforms)(
        weight_specs, spec)
  except Exception as e:  # noqa: BLE001 - lowering errors come in many types
    raise UserInputError(f"export for platforms {list(platforms)} failed: {e}") from e
  leaves = jax.tree.leaves(model.variables)
  meta = {k: info[k] for k in ("method", "variants", "image_size", "num_channels",
                               "preprocessing", "image_score", "method_scores", "thresholds",
                               "map_quantiles", "category", "dataset", "steps")}
  meta.update(format=EXPORT_FORMAT, platforms=list(platforms), jax_version=jax.__version__,
              input={"shape": ["batch", size, size, channels], "dtype": "uint8"},
              outputs={"maps": {v: ["batch", size, size] for v in info["variants"]},
                       "scores": info["method_scores"]},
              num_weights=len(leaves), source_workdir=str(model.workdir))
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  if out_dir.exists() and not (out_dir / "model.stablehlo").is_file() and any(out_dir.iterdir()):
    raise UserInputError(f"--out {out_dir} exists and is not a vqjax export; choose a new folder")
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
    (staging / "model.stablehlo").write_bytes(exported.serialize())
    with open(staging / "weights.npz", "wb") as f:
      np.savez(f, **{f"w{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    (staging / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    staging.chmod(0o755)
    if out_dir.exists():
      old = out_dir.with_name(f".{out_dir.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      out_dir.rename(old)
      staging.rename(out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      staging.rename(out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out_dir


def parse_thresholds(values) -> dict[str, float] | None:
  """--threshold variant=value (repeatable) -> {variant: value}."""
  out = {}
  for value in values or ():
    variant, sep, number = value.partition("=")
    try:
      out[variant] = float(number)
      ok = bool(sep) and bool(variant) and np.isfinite(out[variant])
    except ValueError:
      ok = False
    if not ok:
      raise UserInputError(f"--threshold {value!r}: expected variant=number, e.g. ssim_am=0.42")
  return out or None


