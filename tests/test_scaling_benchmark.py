"""benchmarks/scaling.py: its table from measured rows, and (slow) one real run of it."""
import json
import subprocess
import sys
import pathlib

import pytest

from benchmarks import scaling

REPO = pathlib.Path(__file__).resolve().parents[1]


def _row(processes, devices, train, inference):
  return {"processes": processes, "devices": devices, "batch": 8 * devices, "device_kind": "cpu",
          "image_size": 64,
          "train_images_per_s": train, "train_step_ms": 1e3 * 8 * devices / train,
          "train_first_call_s": 1.0, "inference_images_per_s": inference,
          "inference_batch_ms": 1e3 * 8 * devices / inference}


def test_table_gives_each_configuration_against_one_device(tmp_path):
  rows = [_row(1, 1, 50.0, 200.0), _row(1, 4, 100.0, 300.0), _row(2, 4, 75.0, 150.0)]
  info = {"platform": "cpu", "device": "cpu", "command": "python -m benchmarks.scaling",
          "date_utc": "2026-12-01T00:00:00Z", "cpu_count": 2, "per_device_batch": 8,
          "image_size": 64, "note_short": "fake devices", "note": "Fake CPU devices."}
  lines = scaling._markdown(rows, info).splitlines()
  assert "| 1 x 4 | 32 | 100 | 2.00x | 320.0 | 300 | 1.50x |" in lines
  assert "| 2 x 2 | 32 | 75 | 1.50x | 426.7 | 150 | 0.75x |" in lines
  scaling._figure(rows, info, tmp_path / "cpu.png")
  assert (tmp_path / "cpu.png").stat().st_size > 10_000


@pytest.mark.slow  # two configurations, three processes: ~1 min on 2 cores
def test_one_run_on_fake_devices_and_two_processes(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--devices", "1,4",
                        "--steps", "1", "--warmup", "0", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads((tmp_path / "cpu.json").read_text())["rows"]
  assert [(r["processes"], r["devices"]) for r in rows] == [(1, 1), (1, 4), (2, 4)]
  assert all(r["train_images_per_s"] > 0 and r["inference_images_per_s"] > 0 for r in rows)
