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

from test_readers import _write_cifar_batch
from vqjax.data import demo, one_vs_rest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(config, *args):
  out = subprocess.run([sys.executable, "-m", "vqjax.main", "--config", config, *args], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def test_mvtec_sweep_over_all_categories_writes_results_table(tmp_path):
  root = tmp_path / "demo"
  demo.generate_demo_dataset(root, num_train=8, num_test_good=3, num_test_per_defect=2)
  workdir = tmp_path / "runs" / "{category}"
  _run("configs/mvtec_vq.py:smoke", f"--config.data.root={root}", "--config.data.category=all",
       f"--config.workdir={workdir}", "--config.train.num_steps=3")
  for category in demo.DEMO_CATEGORIES:
    metrics = json.loads((tmp_path / "runs" / category / "metrics.json").read_text())
    for key in ("pixel_auroc", "per_image_pixel_auroc", "au_pro", "image_accuracy", "pixel_f1"):
      assert 0.0 <= metrics["ssim_am"][key] <= 1.0, key
    assert metrics["ssim_am"]["threshold"]["protocol"] == "bergmann"
    for picture in ("roc_image.png", "roc_pixel.png", "pro.png"):
      assert (tmp_path / "runs" / category / picture).stat().st_size > 1000
  table = (tmp_path / "runs" / "all" / "results.md").read_text()
  for category in (*demo.DEMO_CATEGORIES, "**mean**"):
    assert f"| {category} |" in table
  rows = list(csv.DictReader(io.StringIO((tmp_path / "runs" / "all" / "results.csv").read_text())))
  per_map = [r for r in rows if r["map"] == "ssim_am"]
  assert [r["category"] for r in per_map] == [*demo.DEMO_CATEGORIES, "mean"]
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
  from sklearn.metrics import roc_auc_score
  keep = arrays["has_mask"]
  assert keep.tolist() == [True] * 4 + [False] * 2
  expected = roc_auc_score(arrays["masks"][keep].reshape(-1), arrays["map_ssim"][keep].reshape(-1))
  assert metrics["ssim"]["pixel_auroc"] == pytest.approx(expected, abs=1e-12)


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
       "--config.data.category=all", f"--config.workdir={workdir}", "--config.train.num_steps=2")
  metrics = json.loads((tmp_path / "runs" / "cat" / "metrics.json").read_text())
  assert metrics["run"]["num_images"]["test"] == 30
  assert metrics["run"]["num_images"]["test_anomalous"] == 27
  assert metrics["ssim_am"]["pixel_auroc"] is None  # no pixel ground truth in CIFAR-10
  assert 0.0 <= metrics["ssim_am"]["image_auroc"] <= 1.0
  assert metrics["run"]["image_score"] == "mean"
  table = (tmp_path / "runs" / "all" / "results.md").read_text()
  assert "| airplane |" in table and "| **mean** |" in table
  assert "paper (image auroc)" in table and "| **mean** |" in table.splitlines()[-1]
  assert "0.66" in table.splitlines()[-1]  # Table III mean of SSIM+AM beside ours


@pytest.mark.parametrize("overrides", [
    (),
    ("--config.anomaly.residual=input_vs_output", "--config.anomaly.local_constraint=False",
     "--config.anomaly.eta=0.5"),
])
def test_latent_resampling_runs_end_to_end_and_writes_all_metrics(tmp_path, overrides):
  workdir = tmp_path / "run"
  _run("configs/mvtec_vq_resample.py:smoke", f"--config.workdir={workdir}", *overrides)
  metrics = json.loads((workdir / "metrics.json").read_text())
  r = metrics["resample"]
  for key in ("pixel_auroc", "image_auroc", "au_pro", "image_accuracy", "image_f1", "pixel_f1"):
    assert 0.0 <= r[key] <= 1.0, key
  for stage in ("vqvae", "prior"):
    assert (workdir / stage / "checkpoints").is_dir() and (workdir / stage / "train_log.jsonl").exists()
  if overrides:
    assert metrics["run"]["eta"] == 0.5 and metrics["run"]["eta_search"] is None
  else:  # grid search on validation images with rectangles, never on test
    assert set(metrics["run"]["eta_search"]) == {"0.001", "0.1"}
    assert metrics["run"]["eta"] in (0.001, 0.1)
    # The resampling benchmark restores this trained run and checks fast == naive codes.
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
