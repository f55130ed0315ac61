"""Data-parallel scaling of the harness: images/s of the training step and of evaluation's
inference for 1, 2, 4, 8 devices in one process, and for 2 processes x 2 devices against
1 process x 4 (`jax.distributed`, gloo on 127.0.0.1).

  python -m benchmarks.scaling                        # fake CPU devices (what CI machines have)
  python -m benchmarks.scaling --platform cuda --devices 1,2,4,8   # a real multi-GPU host

Weak scaling: a fixed batch per device (global batch = per-device batch x devices), as a
data-parallel user grows the batch with the device count. Each configuration runs in its own
process(es) (device counts are fixed at start-up); the train step is the trainer's (params
replicated, batch sharded, state donated) fed from host arrays each step as the trainer
feeds it; inference is `inference.predict_split` (host batch in, maps gathered to every
process). On fake CPU devices all "devices" share the same cores, so the figure shows the
harness's overheads (partitioning, collectives, host transfers), not speed-up.

Writes <out>/<platform>.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/mvtec_vq.py"  # the default preset: the CPU quick-start model


def _worker(args) -> dict:
  """Runs in a configured process: times the train step and inference, returns numbers."""
  import jax
  if args.distributed:
    from vqjax import distributed
    distributed.initialize(heartbeat_timeout_s=30)
  import numpy as np
  from vqjax import inference, sharding, train as train_lib
  from vqjax.config_defaults import load_config_file
  from vqjax.methods import get_method

  config = load_config_file(str(REPO / CONFIG))
  size = config.data.image_size
  mesh = sharding.make_data_mesh()
  devices = jax.device_count()
  batch = args.per_device_batch * devices
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
  method = get_method(config, 3)
  program = train_lib.single_loss_program(method, config.train, 10**6, images.shape[1:],
                                          images.dtype)
  replicated = sharding.replicated(mesh)
  state = jax.jit(lambda rng: program.init(rng, None), out_shardings=replicated)(
      jax.random.key(0))
  step = jax.jit(program.step, in_shardings=(replicated, sharding.batch_sharded(mesh),
                                             replicated, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))
  key = sharding.put_replicated(jax.random.key(1), mesh)
  rows = np.arange(batch)

  def train_steps(state, n):
    for _ in range(n):
      state, _ = step(state, sharding.put_process_batch(images, rows, mesh), key, None)
    return jax.block_until_ready(state)

  t0 = time.perf_counter()
  state = train_steps(state, 1)
  train_first = time.perf_counter() - t0
  state = train_steps(state, args.warmup)
  t0 = time.perf_counter()
  state = train_steps(state, args.steps)
  train_s = (time.perf_counter() - t0) / args.steps

  variables = program.variables(state, None)
  predict_fn = inference.make_predict_fn(method.predict, mesh)
  split = np.concatenate([images] * args.steps)
  inference.predict_split(predict_fn, variables, images, batch, mesh)  # compile
  t0 = time.perf_counter()
  inference.predict_split(predict_fn, variables, split, batch, mesh)
  infer_s = (time.perf_counter() - t0) / args.steps
  return {"processes": jax.process_count(), "devices": devices, "batch": batch,
          "image_size": size,
          "device_kind": jax.devices()[0].device_kind,
          "train_images_per_s": batch / train_s, "train_step_ms": 1e3 * train_s,
          "train_first_call_s": train_first,
          "inference_images_per_s": batch / infer_s, "inference_batch_ms": 1e3 * infer_s}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args, devices_per_process: int, processes: int) -> dict:
  """Runs the worker in `processes` processes with devices_per_process devices each;
  returns process 0's result."""
  port = _free_port()
  children = []
  for index in range(processes):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.platform == "cpu":
      env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process))
    else:  # this process's own GPUs
      first = index * devices_per_process
      env["CUDA_VISIBLE_DEVICES"] = ",".join(
          str(first + d) for d in range(devices_per_process))
    command = [sys.executable, "-m", "benchmarks.scaling", "--worker",
               f"--per_device_batch={args.per_device_batch}", f"--steps={args.steps}",
               f"--warmup={args.warmup}"]
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(index))
      command.append("--distributed")
    children.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
  try:
    outputs = [child.communicate(timeout=args.timeout) for child in children]
  finally:
    for child in children:  # a timeout or a failed peer leaves none behind
      if child.poll() is None:
        child.kill()
        child.wait()
  for child, (_, err) in zip(children, outputs):
    if child.returncode != 0:
      raise RuntimeError(f"worker failed ({child.returncode}): {err[-2000:]}")
  return json.loads(outputs[0][0].strip().splitlines()[-1])


def _markdown(rows: list[dict], info: dict) -> str:
  base = rows[0]
  lines = [f"# Data-parallel scaling ({info['platform'].upper()}, device kind "
           f"{info['device']})", "",
           f"`{info['command']}`, {info['date_utc']}, {info['cpu_count']} CPU cores, "
           f"{info['per_device_batch']} images per device at {info['image_size']} px "
           f"(default preset). {info['note']}", "",
           "| processes x devices | global batch | train img/s | vs 1 device | train step ms "
           "| inference img/s | vs 1 device |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['processes']} x {r['devices'] // r['processes']} | {r['batch']} "
        f"| {r['train_images_per_s']:.4g} | {r['train_images_per_s'] / base['train_images_per_s']:.2f}x "
        f"| {r['train_step_ms']:.1f} | {r['inference_images_per_s']:.4g} "
        f"| {r['inference_images_per_s'] / base['inference_images_per_s']:.2f}x |")
  return "\n".join(lines) + "\n"


def _figure(rows: list[dict], info: dict, path: pathlib.Path) -> None:
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6.5, 3.6))
  for position, (key, title) in enumerate((("train_images_per_s", "training step"),
                                           ("inference_images_per_s", "inference"))):
    ax = fig.add_subplot(1, 2, position + 1)
    single = [r for r in rows if r["processes"] == 1]
    ax.plot([r["devices"] for r in single], [r[key] for r in single], "o-",
            label="1 process")
    for r in rows:
      if r["processes"] > 1:
        ax.plot([r["devices"]], [r[key]], "s", color="C3",
                label=f"{r['processes']} processes x {r['devices'] // r['processes']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["devices"] for r in single], [str(r["devices"]) for r in single])
    ax.set_xlabel("devices")
    ax.set_ylabel("images/s")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
  fig.suptitle(f"{info['platform'].upper()}, {info['cpu_count']} cores"
               + (f": {info['note_short']}" if info["note_short"] else f": {info['device']}"),
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--platform", default="cpu", choices=["cpu", "cuda"])
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--per_device_batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--timeout", type=int, default=900)
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaling"))
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(_worker(args)))
    return
  from benchmarks import environment
  counts = [int(n) for n in args.devices.split(",")]
  rows = []
  for n in counts:
    rows.append(_launch(args, n, 1))
    print(f"1 process x {n}: {rows[-1]}", file=sys.stderr)
  if 4 in counts:
    rows.append(_launch(args, 2, 2))
    print(f"2 processes x 2: {rows[-1]}", file=sys.stderr)
  fake = args.platform == "cpu"
  info = {"platform": args.platform, "device": rows[0]["device_kind"],
          "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "command": environment.command_line(sys.argv[1:] if argv is None else argv,
                                              "benchmarks.scaling"),
          "git": environment.git_state(),
          "cpu_count": os.cpu_count(), "per_device_batch": args.per_device_batch,
          "image_size": rows[0]["image_size"], "note_short": "fake devices sharing the cores" if fake else "",
          "note": ("Fake CPU devices (JAX_NUM_CPU_DEVICES) share the same cores: flat or falling "
                   "images/s is the expected result; what the table shows is the harness's "
                   "overhead per device and per process, not GPU scaling." if fake else "")}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{args.platform}.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
  (out / f"{args.platform}.md").write_text(_markdown(rows, info))
  _figure(rows, info, out / f"{args.platform}.png")
  print(_markdown(rows, info))


if __name__ == "__main__":
  main()
