import os

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per test.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


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
