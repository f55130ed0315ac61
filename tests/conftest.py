import atexit
import os
import shutil
import tempfile

import pytest

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per test.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache per test session (empty at its start; the CLI subprocesses inherit
# it): the smoke presets' programs recur across tests, and compiling them is most of the
# suite's time on a CPU. Nothing outlives the session, so every run compiles from scratch once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="vqjax-tests-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Compiling is most of the suite's time and the test programs are tiny: XLA's CPU backend at
# optimisation level 0 compiles them much faster (a smoke CLI run: 30 s -> 18 s) and runs them
# a little slower. Same XLA semantics, other float rounding than -O2 (no test compares with
# numbers from outside the suite). VQJAX_TEST_XLA_OPT=default keeps XLA's default level.
if os.environ.get("VQJAX_TEST_XLA_OPT") != "default" and (
    "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()


def interrupt_at_step(monkeypatch, step: int):
  """Makes the trainer raise KeyboardInterrupt (as Ctrl-C would) when it fetches the batch of
  `step`, i.e. after `step` updates; returns a function that undoes it."""
  from vqjax import train as train_lib
  real = train_lib.batch_indices

  def interrupting(s, *args):
    if s == step:
      raise KeyboardInterrupt
    return real(s, *args)

  monkeypatch.setattr(train_lib, "batch_indices", interrupting)
  return lambda: monkeypatch.setattr(train_lib, "batch_indices", real)


@pytest.fixture(scope="session")
def vq_smoke_run(tmp_path_factory):
  """One CLI smoke run of vqvae_ssim on an unseen RGB MVTec-layout folder (32 px files: no
  resize; eval batch 3 pads the last of 8 test images), shared by the tests of the run's
  outputs (test_cli) and of using the trained model (test_model_use).
  Returns (category folder, workdir, the finished subprocess)."""
  from test_cli import _run_cli, _write_rgb_mvtec
  tmp = tmp_path_factory.mktemp("vq_smoke_run")
  root = _write_rgb_mvtec(tmp / "data", size=32)
  workdir = tmp / "run"
  out = _run_cli(f"--config.data.root={root}", "--config.data.category=widget",
                 f"--config.workdir={workdir}", "--config.data.image_size=32",
                 "--config.eval.save_arrays=True", "--config.eval.batch_size=3",
                 "--config.anomaly.ssim_window_size=11")
  assert out.returncode == 0, out.stderr[-3000:]
  return root / "widget", workdir, out
