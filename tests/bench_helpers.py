"""Running the benchmark harness (benchmarks/run.py) from the tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_smoke_benchmark(out, parts, batches="1,2"):
  """(JSON results, Markdown text, stdout) of `benchmarks.run --preset smoke` on the CPU."""
  command = [sys.executable, "-m", "benchmarks.run", "--preset", "smoke", "--device", "cpu",
             "--batches", batches, "--train-batches", "2", "--repeats", "2", "--warmup", "1",
             "--no-torch-compile", "--parts", ",".join(parts), "--out-dir", str(out)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  data = json.loads((out / "smoke_cpu.json").read_text())
  return data, (out / "smoke_cpu.md").read_text(), done.stdout
