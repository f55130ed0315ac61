"""What the numbers were measured on: device, driver, library versions, settings, command."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys

ENV_VARS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "XLA_PYTHON_CLIENT_ALLOCATOR", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES",
            "OMP_NUM_THREADS", "TF_CPP_MIN_LOG_LEVEL")
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
            "torch", "numpy")


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _run(command: list[str]) -> str | None:
  """Stdout of a short command, or None when it is missing or fails."""
  if shutil.which(command[0]) is None:
    return None
  try:
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
  except (subprocess.SubprocessError, OSError):
    return None
  return out.stdout.strip()


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def command_line(argv: list[str], module: str = "benchmarks.run") -> str:
  """The exact command, as typed to reproduce it."""
  return shlex.join(["python", "-m", module, *argv])


def git_state() -> dict:
  commit = _run(["git", "rev-parse", "HEAD"])
  status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
  return {"commit": commit, "dirty": bool(status) if status is not None else None}


def nvidia_smi() -> str | None:
  return _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
               "--format=csv,noheader"])


def device_slug(name: str) -> str:
  """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (for file names)."""
  return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def collect(argv: list[str], jax_device, torch_device=None, extra: dict | None = None,
            module: str = "benchmarks.run") -> dict:
  """Everything about the run that is not a measurement."""
  import jax  # already imported by the caller; here for the device facts
  info = {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": command_line(argv, module),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "cpu": cpu_name(),
      "cpu_count": os.cpu_count(),
      "versions": {p: _version(p) for p in PACKAGES if _version(p) is not None},
      "jax_backend": jax_device.platform,
      "jax_device": f"{jax_device.device_kind} ({jax_device})",
      "jax_platform_version": getattr(jax_device.client, "platform_version", None),
      "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
      "torch_device": None if torch_device is None else str(torch_device),
      "nvidia_smi": nvidia_smi(),
      "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
      "git": git_state(),
  }
  info.update(extra or {})
  return info
