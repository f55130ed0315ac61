import atexit
import os
import shutil
import tempfile

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
