"""Shared check of a trained workdir's use: predict on image files, export, and the exported
artifact's outputs against predict's and against evaluation's own maps."""
import csv
import pathlib

import numpy as np
from PIL import Image

from vqjax import exported, image_files, predict

# Maps: the exported StableHLO and the jitted predict are the same computation compiled
# twice (XLA may fuse differently): float32 round-off only (IGD: 7e-5 relative, through the
# product over five MS-SSIM scales).
MAP_RTOL, MAP_ATOL = 1e-4, 1e-5


def at_model_size(image_paths, model, folder: pathlib.Path) -> list[pathlib.Path]:
  """The images as the model reads them (decoded, resized), saved losslessly: predict's and
  the export's maps are then at the files' own size, with no resize back."""
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for i, path in enumerate(image_paths):
    array = image_files.image_array(image_files.read_image(pathlib.Path(path)),
                                    model.info["num_channels"], model.info["image_size"])
    out.append(folder / f"{i:03d}.png")
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(out[-1])
  return out


def check_export_against_evaluation(workdir: pathlib.Path, image_paths, tmp_path: pathlib.Path,
                                    eval_maps: dict, eval_scores: dict | None = None) -> dict:
  """The lighter check for the end-to-end tests of each method (one compilation, not two):
  the exported artifact's maps (and the method's own scores) on image_paths equal evaluation's
  maps of the same images. `predict` itself is checked against evaluation for every method
  surface by check_predict_and_export (tests/test_model_use.py)."""
  model = predict.load_model(workdir)
  image_paths = at_model_size(image_paths, model, tmp_path / "inputs")
  loaded = exported.load_exported(predict.export_model(model, tmp_path / "export"))
  result = loaded.predict_files(image_paths)
  for v, maps in eval_maps.items():
    np.testing.assert_allclose(result["maps"][v], maps, rtol=MAP_RTOL, atol=MAP_ATOL,
                               err_msg=f"export vs evaluation, {v}")
  for v, scores in (eval_scores or {}).items():
    np.testing.assert_allclose(result["scores"][v], scores, rtol=MAP_RTOL, atol=MAP_ATOL)
  return result


def check_predict_and_export(workdir: pathlib.Path, image_paths, tmp_path: pathlib.Path,
                             eval_maps: dict | None = None) -> dict:
  """Runs predict and export on image_paths (copied at the model's image size) and checks
  that the export reproduces predict's maps, scores and decisions; with eval_maps
  {variant: [N,H,W]} (evaluation's maps of the same images, in order) also that predict
  reproduces evaluation. Returns the export's outputs."""
  model = predict.load_model(workdir)
  image_paths = at_model_size(image_paths, model, tmp_path / "inputs")
  out_dir = tmp_path / "predict_out"
  rows = predict.predict_images(model, [str(p) for p in image_paths], out_dir,
                                show_progress=False)
  variants = model.info["variants"]
  assert len(rows) == len(image_paths) * len(variants)
  with open(out_dir / "scores.csv", newline="") as f:
    csv_rows = list(csv.DictReader(f))
  assert [r["file"] for r in csv_rows] == [str(r["file"]) for r in rows]

  export_dir = predict.export_model(model, tmp_path / "export")
  loaded = exported.load_exported(export_dir)
  result = loaded.predict_files(image_paths)
  for v in variants:
    written = np.stack([np.load(out_dir / r["map"]) for r in csv_rows if r["variant"] == v])
    np.testing.assert_allclose(result["maps"][v], written, rtol=MAP_RTOL, atol=MAP_ATOL,
                               err_msg=f"export vs predict, {v}")
    scores = np.array([float(r["image_score"]) for r in csv_rows if r["variant"] == v])
    np.testing.assert_allclose(result["scores"][v], scores, rtol=MAP_RTOL, atol=MAP_ATOL)
    decided = [r["is_anomalous"] for r in csv_rows if r["variant"] == v]
    if result["is_anomalous"][v] is None:
      assert set(decided) == {""}
    else:
      assert [str(int(d)) for d in result["is_anomalous"][v]] == decided
    if eval_maps is not None:
      np.testing.assert_allclose(written, eval_maps[v], rtol=MAP_RTOL, atol=MAP_ATOL,
                                 err_msg=f"predict vs evaluation, {v}")
  # Batch polymorphism: a batch of one gives the first image's maps.
  one = loaded.predict_files(image_paths[:1])
  for v in variants:
    np.testing.assert_allclose(one["maps"][v][0], result["maps"][v][0], rtol=MAP_RTOL,
                               atol=MAP_ATOL)
  return result
