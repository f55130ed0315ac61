"""Where the time of the jitted anomaly-map pipeline goes: optimised HLO, census, trace.

  python -m benchmarks.profile_predict                        # paper model, batch 64, fp32 + bf16
  python -m benchmarks.profile_predict --config configs/mvtec_vq.py:smoke --batch 2  # seconds

For each model dtype it compiles `VQVAESSIM.predict` at the batch (random weights, as the
throughput harness uses), then writes under --out-dir:
  predict_<dtype>.hlo.txt   the optimised HLO the device runs;
  summary.json              XLA's cost analysis (flops, bytes accessed), the HLO census, the
                            top ops of the trace, and the floors below;
  trace/                    a jax.profiler trace of --calls calls (open in Perfetto / XProf).
The census answers NOTES.md's questions without a profiler UI: how the convolutions were
lowered (cuDNN forward / backward-input custom calls, or XLA convolutions with lhs dilation,
i.e. transposed convolutions computed over inserted zeros), how many fusions, transposes and
copies there are. Floors: flops / --peak-tflops and bytes / --peak-gbps (datasheet or measured
rates, given on the command line; none by default), against the measured median.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import statistics
import time

import jax
import numpy as np

from benchmarks import jax_cases
from vqjax.config_defaults import load_config_file
from vqjax.report import write_json, write_text


def hlo_census(hlo_text: str) -> dict:
  """Counts of the instructions that decide performance in optimised HLO text."""
  lines = [line.strip() for line in hlo_text.splitlines()]
  custom = collections.Counter(m.group(1) for line in lines
                               for m in [re.search(r'custom_call_target="([^"]+)"', line)] if m)
  fusion_kinds = collections.Counter(m.group(1) for line in lines
                                     for m in [re.search(r"\bfusion\(.*kind=(k\w+)", line)] if m)
  convolutions = [line for line in lines if re.search(r"=\s*\S+\s+convolution\(", line)]
  op = lambda name: sum(1 for line in lines if re.search(rf"=\s*\S+\s+{name}\(", line))
  return {
      "custom_calls": dict(custom),
      "xla_convolutions": len(convolutions),
      "xla_convolutions_with_lhs_dilation": sum("lhs_dilate" in c for c in convolutions),
      "fusions": dict(fusion_kinds),
      "transposes": op("transpose"),
      "copies": op("copy"),
      "while_loops": op("while"),
  }


HOST_WRAPPERS = re.compile(r"Execute|PjRt|Pjit|^\$")


def _trace_file(trace_dir: pathlib.Path) -> pathlib.Path | None:
  found = (sorted(trace_dir.rglob("*.trace.json.gz"))
           + sorted(trace_dir.rglob("perfetto_trace.json.gz")))
  return found[-1] if found else None


def top_trace_ops(trace_dir: pathlib.Path, top: int = 25) -> list[dict]:
  """Total duration per (track, op name) of the complete events in the trace, largest first.

  Device tracks (GPU streams) when the trace has any, else every track (the CPU backend).
  """
  path = _trace_file(trace_dir)
  if path is None:
    return []
  with gzip.open(path, "rt", encoding="utf-8") as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  names = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "")
           for e in events if e.get("ph") == "M" and e.get("name") in ("process_name",
                                                                     "thread_name")}
  totals = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      if names.get((e["pid"], e.get("tid"))) == "python":
        continue  # the Python thread: the caller's own frames
      total = totals[(str(names.get((e["pid"], None), e["pid"])), e.get("name", "?"))]
      total[0] += float(e["dur"])
      total[1] += 1
  on_device = {k: v for k, v in totals.items() if "gpu" in k[0].lower()}
  # CPU backend: XLA's own ops, not the executor's wrapper events.
  chosen = on_device or {k: v for k, v in totals.items() if not HOST_WRAPPERS.search(k[1])}
  rows = sorted(chosen.items(), key=lambda kv: -kv[1][0])[:top]
  return [{"track": track, "op": name, "total_us": round(us, 1), "count": count}
          for (track, name), (us, count) in rows]


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {k: float(cost[k]) for k in ("flops", "bytes accessed", "transcendentals")
          if cost and k in cost}


def profile_dtype(config, dtype: str, batch: int, calls: int, out_dir: pathlib.Path, args) -> dict:
  size = config.data.image_size
  method = jax_cases.method_for(config, dtype, num_channels=3)
  variables = jax_cases.random_variables(method, (size, size, 3))
  params = jax.device_put({k: variables[k] for k in jax_cases.VQVAE_COLLECTIONS})
  rng = np.random.default_rng(0)
  images = [jax.device_put(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
            for _ in range(3)]
  compiled = jax.jit(method.predict).lower(params, images[0]).compile()
  hlo = compiled.as_text()
  write_text(out_dir / f"predict_{dtype}.hlo.txt", hlo)
  for i in range(3):  # warm-up (autotuning, allocator growth) outside the trace and the clock
    jax.block_until_ready(compiled(params, images[i % 3]))
  times = []
  for i in range(max(calls, 5)):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, images[i % 3]))
    times.append(time.perf_counter() - start)
  trace_dir = out_dir / "trace" / dtype
  with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
    for i in range(calls):
      jax.block_until_ready(compiled(params, images[i % 3]))
  cost = _cost(compiled)
  median = statistics.median(times)
  floors = {}
  if args.peak_tflops and "flops" in cost:
    floors["compute_floor_s"] = cost["flops"] / (args.peak_tflops * 1e12)
  if args.peak_gbps and "bytes accessed" in cost:
    floors["memory_floor_s"] = cost["bytes accessed"] / (args.peak_gbps * 1e9)
  return {"dtype": dtype, "batch": batch, "median_s": median,
          "images_per_s": batch / median, "cost_analysis": cost, "floors": floors,
          "census": hlo_census(hlo), "top_ops": top_trace_ops(trace_dir)}


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_predict",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mvtec_vq.py:paper")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--calls", type=int, default=10, help="calls inside the trace")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="compute rate for the floor (e.g. a measured bf16 matmul rate)")
  parser.add_argument("--peak-gbps", type=float, default=None,
                      help="memory bandwidth for the floor (e.g. a measured copy rate)")
  parser.add_argument("--out-dir", type=pathlib.Path,
                      default=pathlib.Path("benchmarks/results/profile"))
  args = parser.parse_args(argv)
  config = load_config_file(args.config)
  args.out_dir.mkdir(parents=True, exist_ok=True)
  device = jax.devices()[0]
  summary = {"device": f"{device.device_kind} ({device.platform})", "config": args.config,
             "jax": jax.__version__, "runs": []}
  for dtype in args.dtypes.split(","):
    run = profile_dtype(config, dtype.strip(), args.batch, args.calls, args.out_dir, args)
    summary["runs"].append(run)
    c = run["census"]
    cost = run["cost_analysis"]
    print(f"\n{dtype} batch {args.batch} on {summary['device']}: {run['images_per_s']:.4g} img/s "
          f"(median {run['median_s'] * 1e3:.3g} ms); GFLOP {cost.get('flops', 0) / 1e9:.3g}, "
          f"GB accessed {cost.get('bytes accessed', 0) / 1e9:.3g}; "
          f"floors {run['floors'] or 'n/a (no --peak-* given)'}")
    print(f"  custom calls {c['custom_calls']}; XLA convolutions {c['xla_convolutions']} "
          f"({c['xla_convolutions_with_lhs_dilation']} with lhs dilation); fusions {c['fusions']}; "
          f"transposes {c['transposes']}, copies {c['copies']}")
    for op in run["top_ops"][:15]:
      per_call = op["count"] // max(args.calls, 1)
      print(f"  {op['total_us'] / args.calls:10.1f} us/call  x{per_call:<3d} "
            f"{op['op'][:90]}  [{op['track'][:30]}]")
  write_json(args.out_dir / "summary.json", summary)
  return summary


if __name__ == "__main__":
  main()
