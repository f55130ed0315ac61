"""The command line end to end on small MVTec-layout folders it has never seen."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from metric_check import check_against_arrays

REPO = pathlib.Path(__file__).resolve().parents[1]


def _write_rgb_mvtec(root: pathlib.Path, category="widget", size=40, seed=0, num_train=12):
  """A tiny RGB MVTec-layout folder: smooth stripes, defects are dark squares with exact masks."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size

  def clean():
    phase = rng.uniform(0, 6)
    base = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * (xx + yy) + phase)
    return np.stack([base, base * 0.8, 1 - base], -1)

  def save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)

  cat = root / category
  for i in range(num_train):
    save(clean(), cat / "train" / "good" / f"{i:03d}.png")
  for i in range(4):
    save(clean(), cat / "test" / "good" / f"{i:03d}.png")
  for i in range(4):
    img, mask = clean(), np.zeros((size, size), np.uint8)
    r, c = rng.integers(4, size - 14, 2)
    img[r:r + 10, c:c + 10] = 0.05
    mask[r:r + 10, c:c + 10] = 255
    save(img, cat / "test" / "dent" / f"{i:03d}.png")
    path = cat / "ground_truth" / "dent" / f"{i:03d}_mask.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
  return root


def _run_cli(*args, cwd=REPO, env=None):
  return subprocess.run([sys.executable, "-m", "vqjax.main", "--config", "configs/mvtec_vq.py:smoke",
                         *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                        env=None if env is None else {**os.environ, **env})


def _skimage_ssim_anomaly_map(image, reconstruction):
  """1 - SSIM averaged over channels, from scikit-image (Gaussian 11x11, sigma 1.5, float64)."""
  return 1.0 - np.mean([structural_similarity(
      image[..., c].astype(np.float64), reconstruction[..., c].astype(np.float64), full=True,
      data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)[1]
      for c in range(image.shape[-1])], axis=0)


def test_cli_runs_end_to_end_on_an_unseen_folder_and_writes_all_outputs(vq_smoke_run):
  # 32 px files (no resize: files compare as stored); 8 test images in batches of 3: the last
  # batch is padded, its tail must be dropped.
  category, workdir, out = vq_smoke_run
  root = category.parent
  assert "ssim_am" in out.stdout and "pixel_AUROC" in out.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  for variant in ("ssim", "ssim_am"):
    assert {"pixel_auroc", "image_auroc", "au_pro", "image_accuracy"} <= set(metrics[variant])
  assert metrics["run"]["category"] == "widget" and metrics["run"]["steps"] == 6
  assert metrics["config"]["data"]["root"] == str(root)
  assert (workdir / "summary.md").read_text().startswith("# vqvae_ssim")
  overlays = sorted((workdir / "overlays").glob("*.png"))
  assert len(overlays) == 2
  arrays = np.load(workdir / "eval_arrays.npz")
  assert arrays["images"].shape == (8, 32, 32, 3) and arrays["masks"].dtype == bool
  # The images are the test files, in order, as read from disk.
  names = [str(n) for n in arrays["names"]]
  for i in (0, 7):
    from_disk = np.asarray(Image.open(root / "widget" / names[i]).convert("RGB")) / 255.0
    np.testing.assert_allclose(arrays["images"][i], from_disk, atol=1e-6)
  # Each stored SSIM map is the map of its own image and reconstruction (scikit-image).
  for i in range(8):
    expected = _skimage_ssim_anomaly_map(arrays["images"][i], arrays["reconstructions"][i])
    np.testing.assert_allclose(arrays["map_ssim"][i], expected, atol=1.5e-4, err_msg=str(i))
  # metrics.json is recomputable from eval_arrays.npz with scikit-learn.
  for variant in ("ssim", "ssim_am"):
    assert arrays[f"map_{variant}"].shape == (8, 32, 32)
    check_against_arrays(metrics[variant], arrays, variant, "max", min_area=4)
  # A second invocation resumes (nothing to train) and rewrites the same metrics; its compiled
  # programs go to the folder --compilation_cache names.
  cache = workdir.parent / "xla_cache"
  again = _run_cli(f"--config.data.root={root}", "--config.data.category=widget",
                   f"--config.workdir={workdir}", "--config.data.image_size=32",
                   "--config.anomaly.ssim_window_size=11", "--config.eval.batch_size=3",
                   f"--compilation_cache={cache}",
                   env={"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from checkpoint step 6" in again.stderr
  metrics_again = json.loads((workdir / "metrics.json").read_text())
  assert metrics_again["ssim_am"] == metrics["ssim_am"]
  assert any(cache.glob("jit_*"))


def test_compilation_cache_folder(monkeypatch, tmp_path):
  from vqjax.main import compilation_cache_dir
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("VQJAX_CACHE_DIR", str(tmp_path / "vqjax"))
  assert compilation_cache_dir("default") == tmp_path / "vqjax" / "xla"
  assert compilation_cache_dir("none") is None
  assert compilation_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own variable
  assert compilation_cache_dir("default") == tmp_path / "jax"


@pytest.mark.slow  # greyscale runs end to end in the FAVAE and IGD CLI tests too
def test_cli_runs_on_a_greyscale_demo_category(tmp_path):
  from vqjax.data import demo
  root = tmp_path / "demo"
  demo.generate_demo_dataset(root, num_train=10, num_test_good=3, num_test_per_defect=2,
                             categories=("gravel",))
  workdir = tmp_path / "run"
  out = _run_cli(f"--config.data.root={root}", "--config.data.category=gravel",
                 f"--config.workdir={workdir}", "--config.eval.save_arrays=True")
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["run"]["num_images"]["test_anomalous"] == 6
  arrays = np.load(workdir / "eval_arrays.npz")
  assert arrays["images"].shape[-1] == 1
  checked = check_against_arrays(metrics["ssim_am"], arrays, "ssim_am", "max", min_area=4)
  assert {"pixel_auroc", "per_image_pixel_auroc", "image_accuracy", "pixel_f1"} <= set(checked)


@pytest.mark.parametrize("override,expected", [
    # What only the command line sees: absl's parse of the overrides.
    ("--config.train.no_such_key=1", "no_such_key"),
    ("--config.train.num_steps=abc", "config.train.num_steps"),
    # A config check, through the CLI once (exit code 2, one line).
    ("--config.anomaly.am_dilation=4", "config.anomaly.am_dilation = 4: expected an odd integer"),
])
def test_cli_rejects_bad_config_with_a_clear_message(tmp_path, override, expected):
  out = _run_cli(override, f"--config.workdir={tmp_path / 'run'}")
  assert out.returncode == 2
  assert expected in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize("key,value,expected", [
    ("data.image_size", 30, "config.data.image_size = 30: expected a multiple of"),
    ("model.dtype", "float16", "config.model.dtype = 'float16': expected one of"),
    ("data.category", "all", "containing '{category}' when data.category=all"),
    ("method", "no_such_method", "config.method = 'no_such_method': expected one of"),
    ("train.optimizer", "sgd", "config.train.optimizer = 'sgd': expected one of"),
])
def test_config_checks_name_the_key(key, value, expected):
  from vqjax.config_checks import ConfigError, validate_config
  from vqjax.config_defaults import load_config_file
  config = load_config_file(str(REPO / "configs/mvtec_vq.py:smoke"))
  config.workdir = "runs/x"
  target = config
  for part in key.split(".")[:-1]:
    target = target[part]
  target[key.split(".")[-1]] = value
  with pytest.raises(ConfigError) as error:
    validate_config(config)
  assert expected in str(error.value)


def test_a_missing_data_root_names_it(tmp_path):
  from vqjax import experiment
  from vqjax.config_defaults import load_config_file
  config = load_config_file(str(REPO / "configs/mvtec_vq.py:smoke"))
  config.data.root, config.workdir = "/nonexistent/mvtec", str(tmp_path / "run")
  with pytest.raises(experiment.UserInputError, match="/nonexistent/mvtec"):
    experiment.run(config, show_progress=False)


def test_cli_refuses_to_resume_a_workdir_with_other_model_settings(vq_smoke_run):
  category, workdir, _ = vq_smoke_run
  outputs = lambda: {p: p.stat().st_mtime_ns for p in workdir.iterdir()
                     if p.is_file() and not p.name.startswith(".")}  # not the lock file
  before = outputs()
  out = _run_cli(f"--config.data.root={category.parent}", "--config.data.category=widget",
                 f"--config.workdir={workdir}", "--config.data.image_size=32",
                 "--config.anomaly.ssim_window_size=11", "--config.model.channels=8")
  assert out.returncode == 2
  assert "model.channels: 16 -> 8" in out.stderr and "new --config.workdir" in out.stderr
  # Refused before anything was written.
  assert outputs() == before


@pytest.mark.parametrize("config_file", ["mvtec_vq.py:smoke", "mvtec_vq_resample.py:smoke",
                                         "mvtec_favae.py:smoke", "mvtec_igd.py:smoke"])
def test_every_method_resumes_its_own_workdir(tmp_path, config_file):
  # An interrupted run resumes with the same config: no method may be refused by a key added
  # for another method's older workdirs (IGD's resume was, by model.architecture).
  from vqjax import experiment, report
  from vqjax.config_defaults import load_config_file
  config = load_config_file(str(REPO / "configs" / config_file)).to_dict()
  (tmp_path / "checkpoints").mkdir()
  report.write_json(tmp_path / "config.json", config)
  experiment.check_workdir(tmp_path, config)


def test_a_workdir_resumes_with_tuple_settings_and_keys_added_since(tmp_path):
  # config.json stores tuples as lists (eta_grid): the same config must still resume, and a
  # run written before the optimizer keys existed resumes as the plain Adam it was.
  from vqjax import experiment, report
  from vqjax.config_defaults import load_config_file
  config = load_config_file(str(REPO / "configs/mvtec_vq_resample.py:smoke")).to_dict()
  (tmp_path / "checkpoints").mkdir()
  old = json.loads(json.dumps(config))
  for key in ("optimizer", "b1", "schedule", "frozen_params"):
    del old["train"][key]
  report.write_json(tmp_path / "config.json", old)
  experiment.check_workdir(tmp_path, config)
  config["train"]["optimizer"] = "adamw"
  with pytest.raises(experiment.UserInputError, match="train.optimizer: 'adam' -> 'adamw'"):
    experiment.check_workdir(tmp_path, config)
