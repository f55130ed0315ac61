"""data.category=all spread over devices (sweep.parallel=per_device), over job-array tasks
(sweep.category_index) and merged afterwards (sweep.merge_only): the same per-category results
and the same results.md/results.csv as a serial sweep."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from test_cli import _write_rgb_mvtec
from vqjax import experiment
from vqjax.config_defaults import load_config_file
from vqjax.errors import UserInputError

REPO = pathlib.Path(__file__).resolve().parents[1]
CATEGORIES = ("carpet_like", "grid_like")


def _sweep_args(root, workdir):
  return [f"--config.data.root={root}", "--config.data.category=all",
          f"--config.workdir={workdir}/{{category}}", "--config.data.image_size=32",
          "--config.train.num_steps=2", "--config.eval.num_overlays=0"]


def _cli(args, num_devices: int):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices))
  out = subprocess.run([sys.executable, "-m", "vqjax.main", "--config",
                        "configs/mvtec_vq.py:smoke", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _results(metrics_path: pathlib.Path) -> dict:
  """metrics.json without what differs between two equal runs (timings, paths, sweep mode)."""
  metrics = json.loads(metrics_path.read_text())
  metrics["run"] = {k: v for k, v in metrics["run"].items()
                    if not k.endswith("seconds") and k != "device_ids"}
  del metrics["config"]["workdir"], metrics["config"]["sweep"], metrics["config"]["data"]["root"]
  return metrics


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
  """A 2-category folder swept serially on 1 device and per device on 2 (that a device runs
  a next category after its first: test_devices_are_reused_until_every_category_ran)."""
  tmp = tmp_path_factory.mktemp("sweeps")
  root = tmp / "data"
  for seed, category in enumerate(CATEGORIES):
    _write_rgb_mvtec(root, category=category, size=32, seed=seed)
  _cli(_sweep_args(root, tmp / "serial"), num_devices=1)
  per_device = _cli([*_sweep_args(root, tmp / "per_device"), "--config.sweep.parallel=per_device"],
                    num_devices=2)
  return tmp, root, per_device


def test_per_device_sweep_equals_serial_sweep(sweeps):
  tmp, _, per_device = sweeps
  assert "2 at a time (one per device)" in per_device.stderr
  used = [json.loads((tmp / "per_device" / c / "metrics.json").read_text())["run"]["device_ids"]
          for c in CATEGORIES]
  assert all(len(ids) == 1 for ids in used) and {ids[0] for ids in used} == {0, 1}, used
  for category in CATEGORIES:
    serial = _results(tmp / "serial" / category / "metrics.json")
    spread = _results(tmp / "per_device" / category / "metrics.json")
    assert spread["run"]["devices"] == serial["run"]["devices"] == "1 x cpu"
    assert spread == serial, category  # same single-device programs: bitwise equal
  for table in ("results.md", "results.csv"):
    assert ((tmp / "per_device" / "all" / table).read_text()
            == (tmp / "serial" / "all" / table).read_text())


def _config(root, workdir, **sweep):
  config = load_config_file("configs/mvtec_vq.py:smoke")
  config.data.root, config.data.category = str(root), "all"
  config.workdir = f"{workdir}/{{category}}"
  config.data.image_size = 32
  config.train.num_steps, config.eval.num_overlays = 2, 0
  for key, value in sweep.items():
    config.sweep[key] = value
  return config


def test_merge_of_finished_categories_writes_the_serial_tables(sweeps, tmp_path):
  tmp, root, _ = sweeps
  for category in CATEGORIES:  # as a job array's tasks would have left them
    (tmp_path / category).mkdir()
    (tmp_path / category / "metrics.json").write_text(
        (tmp / "serial" / category / "metrics.json").read_text())
  per_category = experiment.run_sweep(_config(root, tmp_path, merge_only=True))
  assert sorted(per_category) == list(CATEGORIES)
  for table in ("results.md", "results.csv"):
    assert (tmp_path / "all" / table).read_text() == (tmp / "serial" / "all" / table).read_text()

  stale = json.loads((tmp_path / "grid_like" / "metrics.json").read_text())
  stale["config"]["train"]["num_steps"] = 7  # a run left over from other settings
  (tmp_path / "grid_like" / "metrics.json").write_text(json.dumps(stale))
  with pytest.raises(UserInputError, match=r"other settings than this config: grid_like "
                     r"\(train.num_steps: 7\)"):
    experiment.run_sweep(_config(root, tmp_path, merge_only=True))

  (tmp_path / "grid_like" / "metrics.json").unlink()  # a task that failed
  with pytest.raises(UserInputError, match=r"1 of 2 categories have no finished run: grid_like"):
    experiment.run_sweep(_config(root, tmp_path, merge_only=True))


def test_category_index_runs_that_category_only(sweeps, tmp_path, monkeypatch):
  _, root, _ = sweeps
  ran = []
  monkeypatch.setattr(experiment, "run", lambda config, **_: ran.append(
      (config.data.category, config.workdir)) or {})
  assert list(experiment.run_sweep(_config(root, tmp_path, category_index=1))) == ["grid_like"]
  assert ran == [("grid_like", f"{tmp_path}/{{category}}")]
  assert not (tmp_path / "all").exists()  # a task writes no sweep tables
  with pytest.raises(UserInputError, match=r"category_index=2: there are 2 categories \(0\.\.1\)"):
    experiment.run_sweep(_config(root, tmp_path, category_index=2))


def test_a_failing_category_stops_the_per_device_sweep(monkeypatch, tmp_path):
  """The first failure stops the categories running beside it (they save and stop, as on
  Ctrl-C) and cancels the queued ones; the error is raised, naming its category in the log."""
  import threading
  import jax
  from vqjax import train
  monkeypatch.setattr(experiment.jax, "local_devices", lambda: [jax.devices()[0]] * 2)
  started = []
  b_running = threading.Event()

  def fake_run(config, **_):
    category = config.data.category
    started.append(category)
    if category == "a":
      assert b_running.wait(30)
      raise UserInputError("category a is broken")
    b_running.set()
    assert train._stop_event.get().wait(30)  # asked to stop by the failure of "a"
    raise KeyboardInterrupt

  monkeypatch.setattr(experiment, "run", fake_run)
  with pytest.raises(UserInputError, match="category a is broken"):
    experiment._run_per_device(_config(tmp_path, tmp_path), ["a", "b", "c"], False)
  assert sorted(started) == ["a", "b"]  # "c" was queued and never started


def test_devices_are_reused_until_every_category_ran(monkeypatch, tmp_path):
  """5 categories on 2 devices: each category runs once, in its thread's scope of one device,
  never two at once on a device."""
  import logging
  import threading
  import time
  import jax
  from vqjax import sharding
  devices = [jax.devices()[0], jax.devices()[0]]  # two slots (the test process has one CPU)
  monkeypatch.setattr(experiment.jax, "local_devices", lambda: devices)
  lock, busy, ran = threading.Lock(), [0], []

  def fake_run(config, **_):
    with lock:
      busy[0] += 1
      assert busy[0] <= 2
    ran.append((config.data.category, sharding.make_data_mesh().size))
    experiment.logger.info("working")  # tagged with its category (the runs' lines interleave)
    time.sleep(0.05)
    with lock:
      busy[0] -= 1
    return {"category": config.data.category}

  monkeypatch.setattr(experiment, "run", fake_run)
  names = [f"c{i}" for i in range(5)]
  records = []
  handler = logging.Handler()
  handler.emit = lambda record: records.append(record.getMessage())
  experiment.logger.addHandler(handler)
  level = experiment.logger.level
  experiment.logger.setLevel(logging.INFO)  # setLevel: also clears logging's level cache
  try:
    out = experiment._run_per_device(_config(tmp_path, tmp_path), names, False)
    experiment.logger.info("after the sweep")
  finally:
    experiment.logger.removeHandler(handler)
    experiment.logger.setLevel(level)
  assert sorted(m for m in records if m.endswith("working")) == [f"[{c}] working" for c in names]
  assert "after the sweep" in records  # no tag outside the sweep's tasks
  assert list(out) == names and all(out[c]["category"] == c for c in names)
  assert sorted(ran) == [(c, 1) for c in names]  # each once, on a one-device mesh
