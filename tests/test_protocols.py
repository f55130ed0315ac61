"""The three paper protocols end to end on small data in each real on-disk format."""
import csv
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from metric_check import check_against_arrays
from test_readers import _write_cifar_batch
from vqjax.data import demo, one_vs_rest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(config, *args):
  out = subprocess.run([sys.executable, "-m", "vqjax.main", "--config", config, *args], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


@pytest.mark.slow  # minutes: run with `python -m pytest -q -m slow`
def test_mvtec_sweep_over_all_categories_writes_results_table(tmp_path):
  root = tmp_path / "demo"
  categories = ("brick", "grass", "moon")
  demo.generate_demo_dataset(root, num_train=8, num_test_good=3, num_test_per_defect=2,
                             categories=categories)
  workdir = tmp_path / "runs" / "{category}"
  _run("configs/mvtec_vq.py:smoke", f"--config.data.root={root}", "--config.data.category=all",
       f"--config.workdir={workdir}", "--config.train.num_steps=3", "--config.eval.save_arrays=True")
  for category in categories:
    metrics = json.loads((tmp_path / "runs" / category / "metrics.json").read_text())
    arrays = np.load(tmp_path / "runs" / category / "eval_arrays.npz")
    for variant in ("ssim", "ssim_am"):
      checked = check_against_arrays(metrics[variant], arrays, variant, "max", min_area=4)
      assert {"pixel_auroc", "per_image_pixel_auroc", "image_accuracy", "pixel_f1"} <= set(checked)
    assert 0.0 <= metrics["ssim_am"]["au_pro"] <= 1.0  # AU-PRO: tested against its definition in test_metrics
    assert metrics["ssim_am"]["threshold"]["protocol"] == "bergmann"
    for picture in ("roc_image.png", "roc_pixel.png", "pro.png"):
      assert (tmp_path / "runs" / category / picture).stat().st_size > 1000
  table = (tmp_path / "runs" / "all" / "results.md").read_text()
  for category in (*categories, "**mean**"):
    assert f"| {category} |" in table
  rows = list(csv.DictReader(io.StringIO((tmp_path / "runs" / "all" / "results.csv").read_text())))
  per_map = [r for r in rows if r["map"] == "ssim_am"]
  assert [r["category"] for r in per_map] == [*categories, "mean"]
  values = [float(r["pixel_auroc"]) for r in per_map]
  assert values[-1] == pytest.approx(np.mean(values[:-1]), abs=1e-6)


def _write_ucsd(root: pathlib.Path, size=32):
  """UCSDped1 with two 6-frame train clips and two test clips (one with pixel truth)."""
  rng = np.random.default_rng(0)
  ped1 = root / "UCSDped1"

  def frame(anomaly: bool):
    img = np.clip(120 + 20 * rng.standard_normal((size, size)), 0, 255)
    mask = np.zeros((size, size), np.uint8)
    if anomaly:
      img[10:18, 12:20], mask[10:18, 12:20] = 255, 255
    return img.astype(np.uint8), mask

  for clip in ("Train001", "Train002"):
    (ped1 / "Train" / clip).mkdir(parents=True)
    for i in range(6):
      Image.fromarray(frame(False)[0]).save(ped1 / "Train" / clip / f"{i + 1:03d}.tif")
  for clip, anomalous in (("Test001", [False, True, True, False]), ("Test002", [True, False])):
    (ped1 / "Test" / clip).mkdir(parents=True)
    if clip == "Test001":
      (ped1 / "Test" / f"{clip}_gt").mkdir()
    for i, a in enumerate(anomalous):
      img, mask = frame(a)
      Image.fromarray(img).save(ped1 / "Test" / clip / f"{i + 1:03d}.tif")
      if clip == "Test001":
        Image.fromarray(mask).save(ped1 / "Test" / f"{clip}_gt" / f"{i + 1:03d}.bmp")
  (ped1 / "Test" / "UCSDped1.m").write_text(
      "TestVideoFile{end+1}.gt_frame = [2:3];\nTestVideoFile{end+1}.gt_frame = [1:1];\n")
  return root


def test_ucsd_protocol_runs_and_scores_pixels_only_on_clips_with_truth(tmp_path):
  root = _write_ucsd(tmp_path / "ucsd")
  workdir = tmp_path / "run"
  _run("configs/ucsd_vq.py:smoke", f"--config.data.root={root}", f"--config.workdir={workdir}",
       "--config.eval.save_arrays=True")
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["run"]["num_images"] == {"train": 6, "val": 6, "test": 6, "test_anomalous": 3,
                                          "test_with_pixel_truth": 4}
  arrays = np.load(workdir / "eval_arrays.npz")
  keep = arrays["has_mask"]
  assert keep.tolist() == [True] * 4 + [False] * 2
  expected = roc_auc_score(arrays["masks"][keep].reshape(-1), arrays["map_ssim"][keep].reshape(-1))
  assert metrics["ssim"]["pixel_auroc"] == pytest.approx(expected, abs=1e-12)
  for variant in ("ssim", "ssim_am"):
    check_against_arrays(metrics[variant], arrays, variant, "max", min_area=4)


@pytest.mark.slow  # minutes: run with `python -m pytest -q -m slow`
def test_cifar10_one_vs_rest_sweep_over_ten_classes(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar" / one_vs_rest.CIFAR_FOLDER
  folder.mkdir(parents=True)
  for b in range(5):
    _write_cifar_batch(folder / f"data_batch_{b + 1}",
                       rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                       [(b * 20 + i) % 10 for i in range(20)])
  _write_cifar_batch(folder / "test_batch", rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
                     [i % 10 for i in range(30)])
  workdir = tmp_path / "runs" / "{category}"
  _run("configs/cifar10_vq.py:smoke", f"--config.data.root={tmp_path / 'cifar'}",
       "--config.data.category=all", f"--config.workdir={workdir}", "--config.train.num_steps=2",
       "--config.eval.save_arrays=True")
  metrics = json.loads((tmp_path / "runs" / "cat" / "metrics.json").read_text())
  assert metrics["run"]["num_images"]["test"] == 30
  assert metrics["run"]["num_images"]["test_anomalous"] == 27
  assert metrics["ssim_am"]["pixel_auroc"] is None  # no pixel ground truth in CIFAR-10
  assert metrics["run"]["image_score"] == "mean"
  # Table III protocol: image AUROC of the per-image MEAN of the map.
  arrays = np.load(tmp_path / "runs" / "cat" / "eval_arrays.npz")
  for variant in ("ssim", "ssim_am"):
    maps = arrays[f"map_{variant}"].astype(np.float64)
    expected = roc_auc_score(arrays["labels"], maps.reshape(30, -1).mean(axis=1))
    assert metrics[variant]["image_auroc"] == pytest.approx(expected, abs=1e-12)
    check_against_arrays(metrics[variant], arrays, variant, "mean", min_area=4)
  lines = (tmp_path / "runs" / "all" / "results.md").read_text().splitlines()
  header = [c.strip() for c in next(l for l in lines if l.startswith("| category")).split("|")]
  rows = {cells[1]: cells for cells in ([c.strip() for c in l.split("|")] for l in lines
                                        if l.startswith("| ") and not l.startswith("| category"))}
  paper_column = header.index("ssim_am paper (image auroc)")
  # Table III of Gangloff et al. 2022, VQ-VAE SSIM+AM column: airplane 0.69, ship 0.74, mean 0.66.
  assert rows["airplane"][paper_column] == "0.69" and rows["ship"][paper_column] == "0.74"
  assert lines[-1].startswith("| **mean** |") and rows["**mean**"][paper_column] == "0.66"
  assert rows["**mean**"][header.index("ssim paper (image auroc)")] == "0.65"


@pytest.mark.parametrize("overrides", [
    (),
    # The ablation flags' maps are checked in test_methods.py / test_latent_resampling.py; this
    # second full two-stage run only adds the CLI path with a fixed eta (slow: ~1 min).
    pytest.param(("--config.anomaly.residual=input_vs_output",
                  "--config.anomaly.local_constraint=False", "--config.anomaly.eta=0.5"),
                 marks=pytest.mark.slow),
])
def test_latent_resampling_runs_end_to_end_and_writes_all_metrics(tmp_path, overrides):
  workdir = tmp_path / "run"
  _run("configs/mvtec_vq_resample.py:smoke", f"--config.workdir={workdir}",
       "--config.eval.save_arrays=True", *overrides)
  metrics = json.loads((workdir / "metrics.json").read_text())
  r = metrics["resample"]
  assert metrics["run"]["image_score"] == "mean"  # the CPU default's (NOTES.md, 2026-12-02)
  checked = check_against_arrays(r, np.load(workdir / "eval_arrays.npz"), "resample", "mean",
                                 min_area=4)
  assert {"pixel_auroc", "image_auroc", "image_accuracy", "pixel_f1"} <= set(checked)
  for key in ("au_pro", "image_f1"):
    assert 0.0 <= r[key] <= 1.0, key
  for stage in ("vqvae", "prior"):
    assert (workdir / stage / "checkpoints").is_dir() and (workdir / stage / "train_log.jsonl").exists()
  if overrides:
    assert metrics["run"]["eta"] == 0.5 and metrics["run"]["eta_search"] is None
  else:  # grid search on validation images with rectangles, never on test
    assert set(metrics["run"]["eta_search"]) == {"0.001", "0.1"}
    assert metrics["run"]["eta"] in (0.001, 0.1)


@pytest.mark.slow  # the exactness of fast vs naive resampling: tests/test_latent_resampling.py
def test_resampling_benchmark_restores_a_trained_run(tmp_path):
  """The resampling benchmark restores a trained run and checks fast == naive codes."""
  workdir = tmp_path / "run"
  _run("configs/mvtec_vq_resample.py:smoke", f"--config.workdir={workdir}")
  out = subprocess.run(
      [sys.executable, "-m", "benchmarks.bench_resampling", "--config",
       "configs/mvtec_vq_resample.py:smoke", "--workdir", str(workdir), "--batches", "1,2",
       "--images", "5", "--repeats", "1", "--out", str(tmp_path / "resampling.json")],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads((tmp_path / "resampling.json").read_text())["rows"]
  assert {(r["images"], r["batch"], r["num_images"]) for r in rows} == {
      (images, batch, 5 // batch * batch) for images in ("normal", "defective", "mix")
      for batch in (1, 2)}
  for r in rows:
    assert r["exact"] and r["naive_checked_images"] == r["num_images"]
    # One pass per table position + the pass for the original constraint.
    assert r["naive"]["prior_tables_per_image"] == 1 + r["table"][0] * r["table"][1]
    # Batched runs every table of a batch until its slowest is done; refilling never more.
    assert r["mean_passes"] <= r["refilled"]["prior_tables_per_image"]
    assert r["refilled"]["prior_tables_per_image"] <= r["batched"]["prior_tables_per_image"]
    assert r["batched"]["prior_tables_per_image"] <= r["max_passes"]
    if r["batch"] == 1:
      assert r["batched"]["prior_tables_per_image"] == r["mean_passes"]
  assert "| refilled vs naive |" in out.stdout
