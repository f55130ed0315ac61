"""Using a trained model from the command line: predict on new folders, export, and the
exported artifact in a fresh process with jax + numpy only (no Flax, no configs)."""
import csv
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from model_use_check import MAP_ATOL, MAP_RTOL, check_predict_and_export

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def trained_run(vq_smoke_run):
  """(category folder, workdir) of the session's vqvae_ssim smoke run (conftest)."""
  return vq_smoke_run[:2]


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "vqjax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_model_file_carries_the_thresholds_evaluation_fitted(trained_run):
  _, workdir = trained_run
  info = json.loads((workdir / "model.json").read_text())
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert info["variants"] == ["ssim", "ssim_am"] and info["image_size"] == 32
  assert info["num_channels"] == 3 and info["image_score"] == "max"
  for v in info["variants"]:
    assert info["thresholds"][v] == metrics[v]["threshold"]
    assert info["map_quantiles"][v] == metrics["run"]["validation_map_quantiles"][v]


def test_predict_cli_equals_evaluation_and_writes_every_output(trained_run, tmp_path):
  category, workdir = trained_run
  arrays = np.load(workdir / "eval_arrays.npz")
  names = [str(n) for n in arrays["names"]]
  out_dir = tmp_path / "pred"
  # A folder (recursive), as a user points predict at new images; batch 3 pads the last batch.
  done = _main("--mode=predict", f"--workdir={workdir}", f"--images={category / 'test'}",
               f"--out={out_dir}", "--batch_size=3")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  rows = _read_csv(out_dir / "scores.csv")
  assert len(rows) == 2 * len(names)
  info = json.loads((workdir / "model.json").read_text())
  metrics = json.loads((workdir / "metrics.json").read_text())
  by_name = {(pathlib.Path(r["file"]).relative_to(category).as_posix(), r["variant"]): r
             for r in rows}
  for v in ("ssim", "ssim_am"):
    threshold = info["thresholds"][v]["value"]
    for i, name in enumerate(names):
      row = by_name[(name, v)]
      amap = np.load(out_dir / row["map"])
      # The map predict writes is the map evaluation scored (same file, same model).
      np.testing.assert_allclose(amap, arrays[f"map_{v}"][i], rtol=MAP_RTOL, atol=MAP_ATOL)
      assert float(row["image_score"]) == pytest.approx(float(amap.max()), rel=1e-6)
      assert float(row["threshold"]) == threshold
      mask = np.asarray(Image.open(out_dir / row["map"].replace("maps/", "masks/")
                                   .replace(".npy", ".png")))
      np.testing.assert_array_equal(mask > 0, amap >= threshold)
      overlay = Image.open(out_dir / row["map"].replace("maps/", "overlays/")
                           .replace(".npy", ".png"))
      assert overlay.size == (32, 32) and overlay.mode == "RGB"
    # The decisions are evaluation's: its balanced accuracy recomputed from scores.csv.
    decided = np.array([by_name[(n, v)]["is_anomalous"] == "1" for n in names])
    labels = arrays["labels"].astype(bool)
    accuracy = 0.5 * (np.mean(~decided[~labels]) + np.mean(decided[labels]))
    assert accuracy == pytest.approx(metrics[v]["image_accuracy"], abs=1e-12)


def test_predict_threshold_override_and_maps_at_each_images_own_size(trained_run, tmp_path):
  _, workdir = trained_run
  folder = tmp_path / "new"
  folder.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (50, 70, 4), np.uint8), "RGBA").save(folder / "a.png")
  Image.fromarray(rng.integers(0, 65535, (24, 20), np.uint16)).save(folder / "b.png")
  out_dir = tmp_path / "pred"
  done = _main("--mode=predict", f"--workdir={workdir}", f"--images={folder}/*.png",
               f"--out={out_dir}", "--threshold=ssim=1e9", "--variants=ssim")
  assert done.returncode == 0, done.stderr[-3000:]
  rows = _read_csv(out_dir / "scores.csv")
  assert [r["variant"] for r in rows] == ["ssim", "ssim"]
  assert all(r["is_anomalous"] == "0" and float(r["threshold"]) == 1e9 for r in rows)
  assert np.load(out_dir / "maps/ssim/a.npy").shape == (50, 70)
  assert np.load(out_dir / "maps/ssim/b.npy").shape == (24, 20)
  assert Image.open(out_dir / "overlays/ssim/a.png").size == (70, 50)
  # With a threshold inside the maps' range: masks at each image's size, decided at the
  # model's size like is_anomalous (a flagged image has a non-empty mask).
  from vqjax import predict
  model = predict.load_model(workdir)
  low = float(np.load(out_dir / "maps/ssim/a.npy").mean())
  rows = predict.predict_images(model, [str(folder)], tmp_path / "pred2", variants=["ssim"],
                                thresholds={"ssim": low}, show_progress=False)
  for row, size in zip(rows, ((50, 70), (24, 20))):
    mask = np.asarray(Image.open(tmp_path / "pred2" / row["map"].replace("maps/", "masks/")
                                 .replace(".npy", ".png")))
    assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
    assert not row["is_anomalous"] or mask.any()


def test_predict_bad_input_gets_one_clear_line(trained_run, tmp_path):
  category, workdir = trained_run
  done = _main("--mode=predict", f"--workdir={workdir}", f"--out={tmp_path / 'o'}",
               "--images=/nonexistent/x")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert done.stderr.strip() == ("error: --images '/nonexistent/x': no image files there (a "
                                 "folder, a file or a glob of ['.bmp', '.jpeg', '.jpg', '.png', "
                                 "'.tif', '.tiff'])")


@pytest.mark.parametrize("kwargs,expected", [
    ({"thresholds": {"nope": 1.0}}, "--threshold names variant 'nope'"),
    ({"variants": ["nope"]}, r"--variants \['nope'\]: this model's variants are"),
    ({"batch_size": 0}, "--batch_size 0"),
])
def test_predict_rejects_bad_options_naming_them(trained_run, tmp_path, kwargs, expected):
  from vqjax import predict
  from vqjax.errors import UserInputError
  category, workdir = trained_run
  model = predict.load_model(workdir)
  with pytest.raises(UserInputError, match=expected):
    predict.predict_images(model, [str(category / "test" / "good")], tmp_path / "o",
                           show_progress=False, **kwargs)
  assert not (tmp_path / "o").exists()


def test_predict_names_a_bad_image_file_and_export_a_bad_platform(trained_run, tmp_path):
  from vqjax import predict
  from vqjax.errors import UserInputError
  _, workdir = trained_run
  model = predict.load_model(workdir)
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(UserInputError, match="cannot decode image file .*broken.png"):
    predict.predict_images(model, [str(tmp_path / "in")], tmp_path / "o", show_progress=False)
  with pytest.raises(UserInputError, match="not an image file"):
    predict.predict_images(model, [str(tmp_path / "notes.txt")], tmp_path / "o",
                           show_progress=False)
  for platforms in (("gpu",), ()):
    with pytest.raises(UserInputError, match="--platforms"):
      predict.export_model(model, tmp_path / "export", platforms=platforms)


@pytest.mark.parametrize("value", ["ssim", "ssim=x", "ssim=inf", "=1"])
def test_threshold_flag_must_be_variant_equals_number(value):
  from vqjax import predict
  from vqjax.errors import UserInputError
  with pytest.raises(UserInputError, match="expected variant=number"):
    predict.parse_thresholds([value])


def test_model_file_mismatch_is_caught(trained_run, tmp_path):
  import shutil
  from vqjax import predict
  from vqjax.errors import UserInputError
  _, workdir = trained_run
  copy = tmp_path / "run"
  for name in ("model.json", "model.msgpack"):
    copy.mkdir(exist_ok=True)
    shutil.copy(workdir / name, copy / name)
  with open(copy / "model.msgpack", "ab") as f:
    f.write(b"x")
  with pytest.raises(UserInputError, match="does not match the checksum"):
    predict.load_model(copy)


# Blocks every import but jax, numpy, scipy and vqjax's exported/decisions modules.
_FRESH_PROCESS = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("flax", "optax", "orbax", "ml_collections", "sklearn", "skimage", "torch",
               "tensorflow", "tensorboardX", "matplotlib", "dm_pix", "absl", "PIL", "tqdm",
               "vqjax.methods", "vqjax.models", "vqjax.predict", "vqjax.train", "configs")
    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED or any(name.startswith(b + ".") or name == b
                                                 for b in BLOCKED):
          raise ImportError(f"blocked in this test: {{name}}")
    sys.meta_path.insert(0, Block())
    import numpy as np
    from vqjax.exported import load_exported
    model = load_exported({export!r})
    images = np.load({images!r})
    out = model(images)
    np.savez({result!r}, **{{f"map_{{v}}": m for v, m in out["maps"].items()}},
             **{{f"score_{{v}}": s for v, s in out["scores"].items()}},
             **{{f"anomalous_{{v}}": a for v, a in out["is_anomalous"].items()}})
    print("loaded", sorted(sys.modules.keys() & {{"flax", "PIL", "ml_collections"}}))
""")


def test_export_runs_in_a_fresh_process_with_jax_and_numpy_only(trained_run, tmp_path):
  category, workdir = trained_run
  done = _main("--mode=export", f"--workdir={workdir}", f"--out={tmp_path / 'export'}")
  assert done.returncode == 0, done.stderr[-3000:]
  meta = json.loads((tmp_path / "export" / "model.json").read_text())
  assert meta["input"] == {"shape": ["batch", 32, 32, 3], "dtype": "uint8"}
  files = sorted((category / "test").rglob("*.png"))
  images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
  np.save(tmp_path / "images.npy", images)
  script = _FRESH_PROCESS.format(export=str(tmp_path / "export"),
                                 images=str(tmp_path / "images.npy"),
                                 result=str(tmp_path / "result.npz"))
  fresh = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  assert "loaded []" in fresh.stdout
  result = np.load(tmp_path / "result.npz")
  # The same images through predict (in this process): the export must agree.
  from vqjax import predict
  model = predict.load_model(workdir)
  out = predict.predict_images(model, [str(f) for f in files], tmp_path / "pred",
                               show_progress=False)
  for v in ("ssim", "ssim_am"):
    rows = [r for r in out if r["variant"] == v]
    maps = np.stack([np.load(tmp_path / "pred" / r["map"]) for r in rows])
    np.testing.assert_allclose(result[f"map_{v}"], maps, rtol=MAP_RTOL, atol=MAP_ATOL)
    np.testing.assert_allclose(result[f"score_{v}"], [r["image_score"] for r in rows],
                               rtol=MAP_RTOL, atol=MAP_ATOL)
    np.testing.assert_array_equal(result[f"anomalous_{v}"], [r["is_anomalous"] for r in rows])


def test_export_replaces_an_earlier_export_and_refuses_other_folders(trained_run, tmp_path):
  category, workdir = trained_run
  target = tmp_path / "export"
  target.mkdir()
  (target / "notes.txt").write_text("mine")
  done = _main("--mode=export", f"--workdir={workdir}", f"--out={target}")
  assert done.returncode == 2 and "is not a vqjax export" in done.stderr
  assert (target / "notes.txt").read_text() == "mine"
  files = sorted((category / "test" / "dent").glob("*.png"))
  check_predict_and_export(workdir, files, tmp_path / "check")
  check_predict_and_export(workdir, files, tmp_path / "check")  # over the first export
  assert sorted(p.name for p in (tmp_path / "check").iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow  # two compilations of the resampling loop (~80 s on 2 busy cores)
def test_latent_resampling_exports_with_its_prior_loop(tmp_path):
  """The method with a data-dependent loop (resample passes in a while_loop over the batch)
  exports with a symbolic batch and reproduces the jitted predict; untrained variables, so
  the test covers the export path, not accuracy."""
  import jax
  import jax.numpy as jnp
  from configs import mvtec_vq_resample
  from vqjax import exported, predict
  from vqjax.methods import get_method
  config = mvtec_vq_resample.get_config("smoke")
  method = get_method(config, 3)
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  vq = method.vq.init(jax.random.key(0), jnp.asarray(images[:1]))
  tables = jnp.zeros((1, 8, 8), jnp.int32)
  prior = method.prior.init(jax.random.key(1), tables)
  variables = jax.device_get({"vqvae": vq, "prior": prior, "eta": jnp.float32(0.05)})
  info = {"method": config.method, "variants": list(method.variants), "image_size": 32,
          "num_channels": 3, "preprocessing": predict.PREPROCESSING, "image_score": "max",
          "method_scores": [], "thresholds": None, "map_quantiles": None, "category": "x",
          "dataset": "mvtec", "steps": 0}
  model = predict.TrainedModel(method=method, variables=variables, info=info, workdir=tmp_path)
  loaded = exported.load_exported(predict.export_model(model, tmp_path / "export"))
  got = loaded(images)
  want = jax.jit(method.predict)(variables, images)
  for v in method.variants:
    np.testing.assert_allclose(got["maps"][v], np.asarray(want["maps"][v]), rtol=MAP_RTOL,
                               atol=MAP_ATOL)
    assert got["is_anomalous"][v] is None  # no threshold stored: no decision


def test_evaluate_mode_reproduces_the_run_and_scores_other_map_settings(trained_run, tmp_path):
  """--mode=evaluate scores the run's own test split with its own model: without --set it
  reproduces the run's metrics.json; --set changes only the maps it names (am_dilation leaves
  SM alone and moves SSIM+AM); the run's files stay as they were."""
  import json
  from vqjax import experiment
  _, workdir = trained_run
  run_metrics = (workdir / "metrics.json").read_bytes()
  same = experiment.reevaluate(workdir, {}, tmp_path / "same")
  saved = json.loads(run_metrics)
  for variant in ("ssim", "ssim_am"):
    for metric in ("pixel_auroc", "image_auroc", "au_pro", "pro", "image_accuracy"):
      assert same[variant][metric] == pytest.approx(saved[variant][metric], abs=1e-6), metric
  assert same["baselines"]["mean_image"]["pixel_auroc"] == pytest.approx(
      saved["baselines"]["mean_image"]["pixel_auroc"], abs=1e-6)
  out = _main("--mode=evaluate", f"--workdir={workdir}", f"--out={tmp_path / 'dil1'}",
              "--set", "anomaly.am_dilation=1", "--set", "anomaly.am_upsample=nearest")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ssim_am" in out.stdout and "pixel_AUROC" in out.stdout
  other = json.loads((tmp_path / "dil1" / "metrics.json").read_text())
  assert other["config"]["anomaly"]["am_dilation"] == 1
  assert other["run"]["settings"] == {"anomaly.am_dilation": "1", "anomaly.am_upsample": "nearest"}
  assert other["ssim"]["pixel_auroc"] == pytest.approx(saved["ssim"]["pixel_auroc"], abs=1e-6)
  assert other["ssim_am"]["pixel_auroc"] != pytest.approx(saved["ssim_am"]["pixel_auroc"], abs=1e-6)
  assert (workdir / "metrics.json").read_bytes() == run_metrics


@pytest.mark.parametrize("setting,message", [
    ("model.channels=8", "not a setting --mode=evaluate can change"),
    ("anomaly.no_such_key=1", "not a setting --mode=evaluate can change"),
    ("anomaly.am_dilation=three", "expected a int"),
    ("anomaly.am_dilation=4", "anomaly.am_dilation"),  # odd only: the method's own check
])
def test_evaluate_mode_refuses_settings_it_cannot_change(trained_run, tmp_path, setting, message):
  from vqjax import experiment
  from vqjax.config_checks import ConfigError
  _, workdir = trained_run
  key, _, value = setting.partition("=")
  with pytest.raises((experiment.UserInputError, ConfigError), match=message):
    experiment.reevaluate(workdir, {key: value}, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_evaluate_mode_never_writes_into_the_run(trained_run):
  from vqjax import experiment
  _, workdir = trained_run
  with pytest.raises(experiment.UserInputError, match="the run's workdir"):
    experiment.reevaluate(workdir, {}, workdir)
