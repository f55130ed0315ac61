"""vqjax against PyTorch, one process, one device, one command:

  python -m benchmarks.run                  # paper model on a GPU seen by both, else the CPU preset
  python -m benchmarks.run --preset cpu     # small model, minutes on a small CPU
  python -m benchmarks.run --preset smoke --repeats 2 --no-torch-compile   # seconds (tests)

Parts (--parts): `inference` = the full anomaly-map pipeline (model -> reconstruction ->
SSIM and SSIM+AM maps), `train` = one optimiser step, `ssim` = the SSIM map alone, `favae` /
`igd` = those methods' inference (configs/mvtec_favae.py, configs/mvtec_igd.py), `igd_train` =
IGD's training step (vqjax only, no PyTorch twin), `deploy` / `deploy_favae` / `deploy_igd` /
`deploy_resample` = a method's full pipeline on uint8 images: vqjax jit and its exported artifact against PyTorch
eager / torch.compile fp32, ONNX Runtime and OpenVINO on the reference's ONNX export
(`pip install -e ".[deploy-bench]"`; asked for by name). Every
configuration is built, timed (benchmarks/harness.py) and freed before the next; results go
to <out-dir>/<preset>_<device>.json (every measurement + environment) and .md (the tables,
also printed last). A configuration that fails is recorded as 'error: ...', one not run as
'skipped: ...'; neither stops the others.

This module imports neither JAX nor the suite at the top: XLA reads its environment
variables when JAX loads, so they are set first (`configure_runtime`).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

from benchmarks.configurations import DEFAULT_PARTS, JAX_PRECISION, PARTS, PRESETS

# XLA flags for a single-threaded CPU backend (they do not touch the GPU backend).
XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _int_list(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    values = ()
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,64, got {text!r}")
  return values


def _parts(text: str) -> tuple[str, ...]:
  parts = tuple(p.strip() for p in text.split(",") if p.strip())
  if not parts or set(parts) - set(PARTS):
    raise argparse.ArgumentTypeError(f"parts must be among {','.join(PARTS)}, got {text!r}")
  return parts


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", choices=tuple(PRESETS),
                 help="model size and defaults; default: paper on a GPU seen by both "
                      "frameworks, else cpu")
  p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto")
  p.add_argument("--batches", type=_int_list, help="inference / SSIM batch sizes, e.g. 1,8,64,256")
  p.add_argument("--train-batches", type=_int_list, help="training batch sizes, e.g. 32,64")
  p.add_argument("--repeats", type=int, help="timed calls per configuration (median of these)")
  p.add_argument("--warmup", type=int, help="untimed calls after the first one")
  p.add_argument("--parts", type=_parts, default=DEFAULT_PARTS,
                 help="comma list of " + ",".join(PARTS) + " (default: all but deploy)")
  p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=True,
                 help="run the torch.compile variant (--no-torch-compile records it as skipped)")
  p.add_argument("--compile-budget-s", type=float, default=900.0,
                 help="once torch.compile first calls have used this many seconds in "
                      "total, the remaining torch.compile configurations are skipped")
  p.add_argument("--compile-mode", default="default",
                 help="torch.compile mode (default, reduce-overhead, max-autotune, ...)")
  p.add_argument("--compile-caches", action=argparse.BooleanOptionalAction, default=False,
                 help="let torch.compile reuse inductor's caches from earlier runs (default: "
                      "off, so its compile time is a cold compile like JAX's)")
  p.add_argument("--fp32-precision", choices=tuple(JAX_PRECISION), default="tf32",
                 help="float32 convs: tf32 (both frameworks' GPU default) or full fp32")
  p.add_argument("--cpu-threads", type=int,
                 help="CPU intra-op threads: 1 = both frameworks single-threaded (default "
                      "when running on the CPU), 0 = the frameworks' own defaults, N > 1 = "
                      "torch N, XLA its default")
  p.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.repeats is not None and args.repeats < 1:
    p.error("--repeats must be >= 1")
  if args.warmup is not None and args.warmup < 0:
    p.error("--warmup must be >= 0")
  if args.cpu_threads is not None and args.cpu_threads < 0:
    p.error("--cpu-threads must be >= 0")
  return args


def configure_runtime(args: argparse.Namespace) -> dict:
  """Environment that must be set before JAX loads; returns what was set (for the results).

  - No up-front grab of 75% of the GPU by XLA, so torch has room in the same process
    (XLA's allocator still grows on demand and keeps what it took; see NOTES.md).
  - CPU threads: by default 1 per framework when the run will be on the CPU. Two runtimes'
    thread pools in one process stall each other on a small CPU (NOTES.md has the numbers).
  """
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  threads = args.cpu_threads
  if threads is None:
    import torch  # torch alone: it does not load XLA
    threads = 1 if args.device == "cpu" or not torch.cuda.is_available() else 0
  applied_to_jax = "jax" not in sys.modules  # else XLA already read its flags
  if threads == 1 and applied_to_jax:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_SINGLE_THREAD}".strip()
  return {"cpu_threads": threads or "framework defaults",
          "xla_cpu_single_thread": threads == 1 and applied_to_jax}


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  runtime = configure_runtime(args)
  from benchmarks import suite  # imports JAX: only now
  return suite.main(args, argv, runtime)


if __name__ == "__main__":
  main()
