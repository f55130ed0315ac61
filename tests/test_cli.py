"""The command line end to end on small MVTec-layout folders it has never seen."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

REPO = pathlib.Path(__file__).resolve().parents[1]


def _write_rgb_mvtec(root: pathlib.Path, category="widget", size=40, seed=0):
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
  for i in range(12):
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


def _run_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "vqjax.main", "--config", "configs/mvtec_vq.py:smoke",
                         *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_cli_runs_end_to_end_on_an_unseen_folder_and_writes_all_outputs(tmp_path):
  root = _write_rgb_mvtec(tmp_path / "data")
  workdir = tmp_path / "run"
  out = _run_cli(f"--config.data.root={root}", "--config.data.category=widget",
                 f"--config.workdir={workdir}", "--config.data.image_size=32",
                 "--config.eval.save_arrays=True")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ssim_am" in out.stdout and "pixel_AUROC" in out.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  for variant in ("ssim", "ssim_am"):
    assert {"pixel_auroc", "image_auroc", "au_pro", "image_accuracy"} <= set(metrics[variant])
  assert metrics["run"]["category"] == "widget" and metrics["run"]["steps"] == 6
  assert metrics["config"]["data"]["root"] == str(root)
  assert (workdir / "summary.md").read_text().startswith("# vqvae_ssim")
  overlays = sorted((workdir / "overlays").glob("*.png"))
  assert len(overlays) == 2
  # metrics.json is recomputable from eval_arrays.npz with scikit-learn.
  arrays = np.load(workdir / "eval_arrays.npz")
  assert arrays["images"].shape == (8, 32, 32, 3) and arrays["masks"].dtype == bool
  for variant in ("ssim", "ssim_am"):
    m = arrays[f"map_{variant}"]
    assert m.shape == (8, 32, 32)
    assert roc_auc_score(arrays["masks"].reshape(-1), m.reshape(-1)) == pytest.approx(
        metrics[variant]["pixel_auroc"], abs=1e-12)
    assert roc_auc_score(arrays["labels"], m.reshape(8, -1).max(1)) == pytest.approx(
        metrics[variant]["image_auroc"], abs=1e-12)
  # A second invocation resumes (nothing to train) and rewrites the same metrics.
  again = _run_cli(f"--config.data.root={root}", "--config.data.category=widget",
                   f"--config.workdir={workdir}", "--config.data.image_size=32")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from checkpoint step 6" in again.stderr
  metrics_again = json.loads((workdir / "metrics.json").read_text())
  assert metrics_again["ssim_am"] == metrics["ssim_am"]


def test_cli_runs_on_a_greyscale_demo_category(tmp_path):
  from vqjax.data import demo
  root = tmp_path / "demo"
  demo.generate_demo_dataset(root, num_train=10, num_test_good=3, num_test_per_defect=2)
  workdir = tmp_path / "run"
  out = _run_cli(f"--config.data.root={root}", "--config.data.category=gravel",
                 f"--config.workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert 0.0 <= metrics["ssim_am"]["pixel_auroc"] <= 1.0
  assert metrics["run"]["num_images"]["test_anomalous"] == 6


@pytest.mark.parametrize("override,expected", [
    ("--config.train.no_such_key=1", "no_such_key"),
    ("--config.train.num_steps=abc", "config.train.num_steps"),
    ("--config.anomaly.am_dilation=4", "config.anomaly.am_dilation = 4: expected an odd integer"),
    ("--config.data.image_size=30", "config.data.image_size = 30: expected a multiple of"),
    ("--config.model.dtype=float16", "config.model.dtype = 'float16': expected one of"),
    ("--config.data.root=/nonexistent/mvtec", "/nonexistent/mvtec"),
    ("--config.data.category=all", "containing '{category}' when data.category=all"),
])
def test_cli_rejects_bad_config_with_a_clear_message(tmp_path, override, expected):
  out = _run_cli(override, f"--config.workdir={tmp_path / 'run'}")
  assert out.returncode != 0
  assert expected in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr[-2000:] or "FileNotFoundError" in out.stderr


def test_cli_refuses_to_resume_a_workdir_with_other_model_settings(tmp_path):
  root = _write_rgb_mvtec(tmp_path / "data")
  workdir = tmp_path / "run"
  common = (f"--config.data.root={root}", "--config.data.category=widget",
            f"--config.workdir={workdir}", "--config.train.num_steps=2")
  assert _run_cli(*common).returncode == 0
  out = _run_cli(*common, "--config.model.channels=8")
  assert out.returncode != 0
  assert "model.channels: 16 -> 8" in out.stderr and "new --config.workdir" in out.stderr


PRESETS = {"configs/mvtec_vq.py": ("default", "paper", "smoke"),
           "configs/mvtec_vq_resample.py": ("default", "paper", "timing", "smoke"),
           "configs/ucsd_vq.py": ("default", "smoke"),
           "configs/cifar10_vq.py": ("default", "smoke")}


@pytest.mark.parametrize("path,preset", [(p, s) for p, presets in PRESETS.items()
                                         for s in presets])
def test_every_preset_passes_the_config_checks(path, preset):
  from vqjax.config_checks import validate_config
  from vqjax.config_defaults import load_config_file
  validate_config(load_config_file(str(REPO / f"{path}:{preset}")))


def test_timing_preset_is_the_paper_model_briefly_trained():
  from vqjax.config_defaults import load_config_file
  paper = load_config_file(str(REPO / "configs/mvtec_vq_resample.py:paper"))
  timing = load_config_file(str(REPO / "configs/mvtec_vq_resample.py:timing"))
  assert timing.model == paper.model and timing.prior == paper.prior
  assert timing.train.num_steps < paper.train.num_steps and timing.anomaly.eta == 5e-4
