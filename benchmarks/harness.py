"""Framework-neutral timing: one `Workload` per configuration, one `measure` for all.

Every configuration is timed the same way, whatever the framework:
  1. first call (from nothing to a synchronised result): tracing / compiling / autotuning /
     lazy initialisation; for JAX the ahead-of-time compile inside it is also timed alone;
  2. `warmup` further calls, not timed;
  3. `repeats` timed calls, each on the next of the pre-generated input batches (rotated)
     and each synchronised (block_until_ready / torch.cuda.synchronize) before the clock
     stops. Steady state = the median of those; images/s = batch / median.
One call per timed sample, so batch-1 samples are latencies (dispatch and sync included).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
import traceback
from typing import Any, Callable

NUM_INPUT_BATCHES = 4  # distinct input batches per configuration, used in turn


@dataclasses.dataclass
class Workload:
  """A configuration ready to run.

  run(i) -> output: one call on input batch i % NUM_INPUT_BATCHES (asynchronous is fine).
  sync(output): blocks until the device has finished that output.
  compile() -> seconds or None: ahead-of-time compile (JAX), done inside the first call.
  memory: a MemoryProbe (reset before the first call, read after the timed calls).
  close(): frees the configuration's buffers.
  """
  run: Callable[[int], Any]
  sync: Callable[[Any], None]
  memory: "MemoryProbe"
  compile: Callable[[], float | None] | None = None
  close: Callable[[], None] = lambda: None
  # Extra facts recorded with the result (e.g. XLA's own size of the compiled program).
  info: Callable[[], dict] = dict


class MemoryProbe:
  """Peak device memory of one configuration; the CPU has none to report."""

  def reset(self) -> None:
    pass

  def read(self) -> dict:
    return {"peak_bytes": None, "peak_note": "n/a (CPU)"}


def measure(workload: Workload, *, warmup: int, repeats: int,
            timer: Callable[[], float] = time.perf_counter) -> dict:
  """Times `workload` as described in the module docstring -> a result dict (seconds)."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  workload.memory.reset()
  start = timer()
  compile_s = workload.compile() if workload.compile is not None else None
  first_output = workload.run(0)
  workload.sync(first_output)
  first_call_s = timer() - start
  for i in range(warmup):
    workload.sync(workload.run(1 + i))
  times = []
  for r in range(repeats):
    t0 = timer()
    workload.sync(workload.run(1 + warmup + r))
    times.append(timer() - t0)
  median = statistics.median(times)
  return dict(first_call_s=first_call_s, compile_s=compile_s, median_s=median,
              p10_s=_quantile(times, 0.1), p90_s=_quantile(times, 0.9),
              min_s=min(times), times_s=times, warmup=warmup, repeats=repeats,
              first_output=first_output, **workload.memory.read(), **workload.info())


def _quantile(values: list[float], q: float) -> float:
  """Linear-interpolated quantile (statistics.quantiles needs >= 2 points)."""
  ordered = sorted(values)
  pos = q * (len(ordered) - 1)
  lo = int(pos)
  hi = min(lo + 1, len(ordered) - 1)
  return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def error_text(exc: BaseException, limit: int = 600) -> str:
  """One readable line for the results: type, message, innermost frame."""
  message = " ".join(str(exc).split())
  frames = traceback.extract_tb(exc.__traceback__)
  where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
  text = f"{type(exc).__name__}: {message}{where}"
  return text if len(text) <= limit else text[:limit - 3] + "..."
