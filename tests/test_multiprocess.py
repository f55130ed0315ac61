"""Real multi-process runs: 2 local processes x 2 CPU devices, `jax.distributed` with a
coordinator on 127.0.0.1 and gloo collectives, against 1 process x 4 CPU devices.

Equality is to float32 reduction order, not bitwise: the 4-device all-reduce of the gradients
sums the same per-device partial sums, but across processes gloo adds them in another order
than XLA does inside one process, so single roundings differ (seen: 1 ulp in the step-1 loss)
and compound over the steps and through the codebook's argmin. Losses are compared at rtol
1e-5 over a few steps, metrics at 2e-3 absolute (seen: 4e-5) and thresholds at 1e-3 relative.
"""
import json
import os
import re
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from test_cli import _write_rgb_mvtec

REPO = pathlib.Path(__file__).resolve().parents[1]
RECORDING_MAIN = REPO / "tests" / "recording_main.py"
RUN_TIMEOUT_S = 300  # per launch: every wait in these tests is bounded
HEARTBEAT_S = 5  # a dead process stops the others after this long


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Launch:
  """num_processes local processes of the CLI (recording their writes under `root`), each
  with devices_per_process CPU devices; killed by process group on exit, whatever happens."""

  def __init__(self, tmp: pathlib.Path, name: str, num_processes: int, devices_per_process: int,
               args, root: pathlib.Path):
    self.logs = [tmp / f"{name}.p{i}.log" for i in range(num_processes)]
    self.records = [tmp / f"{name}.p{i}.writes" for i in range(num_processes)]
    port = _free_port()
    self.processes = []
    for i in range(num_processes):
      env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process),
                 VQJAX_TEST_RECORD_ROOT=str(root), VQJAX_TEST_RECORD_FILE=str(self.records[i]))
      extra = []
      if num_processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
        extra = ["--distributed", f"--heartbeat_timeout={HEARTBEAT_S}"]
      with open(self.logs[i], "w") as log:
        self.processes.append(subprocess.Popen(
            [sys.executable, str(RECORDING_MAIN), *extra, "--config",
             "configs/mvtec_vq.py:smoke", *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

  def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
      return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in self.processes]
    finally:
      self.kill()

  def kill(self):
    for p in self.processes:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)

  def log(self, i: int) -> str:
    return self.logs[i].read_text()

  def writes(self, i: int) -> set[str]:
    path = self.records[i]
    return set(path.read_text().split()) if path.exists() else set()


def _run(tmp, name, num_processes, devices_per_process, workdir, data_root, num_steps):
  launch = Launch(tmp, name, num_processes, devices_per_process, [
      f"--config.data.root={data_root}", "--config.data.category=widget",
      f"--config.workdir={workdir}", "--config.data.image_size=32",
      f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every=2",
      "--config.train.log_every=1", "--config.eval.num_overlays=0"], root=tmp)
  codes = launch.wait()
  assert codes == [0] * num_processes, "\n".join(
      f"--- process {i} (exit {c}):\n{launch.log(i)[-3000:]}" for i, c in enumerate(codes))
  return launch


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows}


def _numbers(tree, prefix=""):
  """{dotted key: float} of the metrics, without timings and paths."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_numbers(value, name + "."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and not name.endswith(
        "seconds"):
      out[name] = float(value)
  return out


def _assert_same_results(a: pathlib.Path, b: pathlib.Path):
  losses_a, losses_b = _losses(a), _losses(b)
  assert sorted(losses_a) == sorted(losses_b)
  np.testing.assert_allclose([losses_a[s] for s in sorted(losses_a)],
                             [losses_b[s] for s in sorted(losses_a)], rtol=1e-5)
  metrics_a = json.loads((a / "metrics.json").read_text())
  metrics_b = json.loads((b / "metrics.json").read_text())
  for variant in ("ssim", "ssim_am", "baselines"):
    numbers_a, numbers_b = _numbers(metrics_a[variant]), _numbers(metrics_b[variant])
    assert numbers_a.keys() == numbers_b.keys()
    for key in numbers_a:
      relative = "threshold" in key
      np.testing.assert_allclose(numbers_a[key], numbers_b[key], atol=0 if relative else 2e-3,
                                 rtol=1e-3 if relative else 0, err_msg=f"{variant}.{key}")
  assert metrics_a["run"]["steps"] == metrics_b["run"]["steps"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """The same 4-step smoke run in 2 processes x 2 devices and in 1 process x 4 devices."""
  tmp = tmp_path_factory.mktemp("multiprocess")
  data_root = _write_rgb_mvtec(tmp / "data", size=32, num_train=40)
  two = _run(tmp, "two", 2, 2, tmp / "two", data_root, num_steps=4)
  one = _run(tmp, "one", 1, 4, tmp / "one", data_root, num_steps=4)
  return tmp, data_root, two, one


def test_two_processes_equal_one_process_of_as_many_devices(two_runs):
  tmp, _, two, _ = two_runs
  assert "[process 1/2]" in two.log(1)  # it did run as 2 processes
  assert "4 x cpu" in (tmp / "two" / "metrics.json").read_text()
  _assert_same_results(tmp / "two", tmp / "one")


def _decoded_training_files(log: str) -> tuple[int, int]:
  found = re.search(r"this process decoded (\d+) of (\d+) files", log)
  assert found, log[-2000:]
  return int(found[1]), int(found[2])


def test_each_process_decodes_only_the_training_images_it_feeds(two_runs):
  """36 training images (40 minus 4 for validation), 4 steps of 8: a process feeds 4 rows of
  each training batch and 4 of each batch of the passes over the training set (codebook use,
  mean-image baseline), so neither decodes them all; one process alone decodes every one."""
  _, _, two, one = two_runs
  decoded = [_decoded_training_files(two.log(i)) for i in range(2)]
  assert all(total == 36 and 0 < count < 36 for count, total in decoded), decoded
  assert _decoded_training_files(one.log(0)) == (36, 36)


def test_only_process_0_writes_outputs(two_runs):
  tmp, _, two, _ = two_runs
  outputs = lambda i: {p for p in two.writes(i) if p.startswith("two/")
                       and not p.startswith("two/checkpoints/")}
  assert {"two/metrics.json", "two/config.json", "two/model.json", "two/model.msgpack",
          "two/train_log.jsonl", "two/summary.md"} <= outputs(0)
  assert outputs(1) == set()
  # Checkpoints are written collectively (orbax): process 1 takes part.
  assert any(p.startswith("two/checkpoints/") for p in two.writes(1))
  assert "pixel_AUROC" in two.log(0) and "pixel_AUROC" not in two.log(1)  # one results table


def test_checkpoints_resume_across_process_counts(two_runs):
  """2 processes' checkpoint (step 4) resumed by 1 process, and 1 process's by 2, to step 6:
  the two continuations agree."""
  tmp, data_root, _, _ = two_runs
  shutil.copytree(tmp / "two", tmp / "two_then_one")
  shutil.copytree(tmp / "one", tmp / "one_then_two")
  one = _run(tmp, "two_then_one", 1, 4, tmp / "two_then_one", data_root, num_steps=6)
  two = _run(tmp, "one_then_two", 2, 2, tmp / "one_then_two", data_root, num_steps=6)
  for launch in (one, two):
    assert "resuming from checkpoint step 4" in launch.log(0)
  _assert_same_results(tmp / "two_then_one", tmp / "one_then_two")
  assert max(_losses(tmp / "two_then_one")) == 6


def _wait_for_rows(launch, log: pathlib.Path, rows: int):
  deadline = time.monotonic() + RUN_TIMEOUT_S
  while not (log.exists() and len(log.read_text().splitlines()) >= rows):
    assert time.monotonic() < deadline, launch.log(0)[-3000:]
    assert all(p.poll() is None for p in launch.processes), launch.log(0)[-3000:]
    time.sleep(0.5)


def test_ctrl_c_to_one_process_stops_all_at_one_step_and_a_killed_one_stops_the_other(tmp_path):
  """SIGINT to process 1 alone: both processes stop at the same step (they agree on it), save
  it together and exit 130. Resumed, then process 1 SIGKILLed: process 0 stops with an error
  within the heartbeat timeout instead of waiting in a collective."""
  data_root = _write_rgb_mvtec(tmp_path / "data", size=32)
  args = [f"--config.data.root={data_root}", "--config.data.category=widget",
          f"--config.workdir={tmp_path / 'run'}", "--config.data.image_size=32",
          "--config.train.num_steps=100000", "--config.train.log_every=1",
          "--config.train.checkpoint_every=100000"]
  log = tmp_path / "run" / "train_log.jsonl"
  launch = Launch(tmp_path, "interrupt", 2, 2, args, root=tmp_path)
  try:
    _wait_for_rows(launch, log, 3)
    launch.processes[1].send_signal(signal.SIGINT)
    codes = [p.wait(timeout=120) for p in launch.processes]
  finally:
    launch.kill()
  assert codes == [130, 130], [launch.log(i)[-2000:] for i in range(2)]
  for i in range(2):
    assert launch.log(i).strip().splitlines()[-1] == f"error: process {i}: interrupted"
  steps = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
  saved = max(steps)  # the step both stopped at, saved by both together
  assert saved >= 3 and saved == max(json.loads(line)["step"]
                                     for line in log.read_text().splitlines())

  launch = Launch(tmp_path, "kill", 2, 2, args, root=tmp_path)
  try:
    _wait_for_rows(launch, log, saved + 2)
    assert f"resuming from checkpoint step {saved}" in launch.log(0)
    os.killpg(launch.processes[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = launch.processes[0].wait(timeout=HEARTBEAT_S + 60)
    stopped_after = time.monotonic() - killed_at
  finally:
    launch.kill()
  assert code != 0
  assert stopped_after < HEARTBEAT_S + 60
  out = launch.log(0)
  # Either the collective in flight fails (our one-line error) or the coordination service
  # notices the missing heartbeats first (jax's own message); both name the cause.
  assert ("another process has probably died" in out
          or "another task died" in out), out[-3000:]
