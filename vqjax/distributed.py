"""Multi-process start-up: `jax.distributed` configured from the cluster's environment.

jax detects SLURM (`srun`), Open MPI (`mpirun`), Kubernetes (with `jax[k8s]`) and Cloud TPU
VMs by itself. Anywhere else (a plain `ssh` per host, a container per process, the tests) three
variables say it, read here because jax reads only the first:

  JAX_COORDINATOR_ADDRESS  host:port of process 0 (every process the same)
  JAX_NUM_PROCESSES        number of processes
  JAX_PROCESS_ID           this process, 0 .. JAX_NUM_PROCESSES-1

CPU processes exchange data with gloo (jax's default CPU collectives); GPUs use NCCL.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax

from vqjax.errors import UserInputError

ENV_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")

# How long a process waits for the others to join, and how long a silent process (killed,
# preempted, hung host) may go unnoticed before every other process stops with an error naming
# it. jax's default heartbeat timeout is 100 s.
DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100


def _int_variable(environ: Mapping[str, str], name: str) -> int | None:
  if name not in environ:
    return None
  try:
    return int(environ[name])
  except ValueError:
    raise UserInputError(f"environment variable {name}={environ[name]!r}: expected an "
                         "integer") from None


def process_arguments(environ: Mapping[str, str] = os.environ) -> dict:
  """jax.distributed.initialize keywords from JAX_NUM_PROCESSES / JAX_PROCESS_ID (the
  coordinator address jax reads itself); empty where the cluster is auto-detected."""
  kwargs = {}
  num_processes = _int_variable(environ, "JAX_NUM_PROCESSES")
  process_id = _int_variable(environ, "JAX_PROCESS_ID")
  if (num_processes is None) != (process_id is None):
    raise UserInputError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID (or neither, under "
                         "SLURM / Open MPI / Kubernetes / Cloud TPU, which jax detects)")
  if num_processes is not None:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise UserInputError(f"JAX_PROCESS_ID={process_id} must be in 0..JAX_NUM_PROCESSES-1 "
                           f"(JAX_NUM_PROCESSES={num_processes})")
    if not environ.get("JAX_COORDINATOR_ADDRESS"):
      raise UserInputError("JAX_NUM_PROCESSES/JAX_PROCESS_ID are set but "
                           "JAX_COORDINATOR_ADDRESS (host:port of process 0) is not")
    kwargs.update(num_processes=num_processes, process_id=process_id)
  return kwargs


def initialize(*, heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
               init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S,
               environ: Mapping[str, str] = os.environ) -> None:
  """jax.distributed.initialize with the process layout of the environment; a clear error
  when there is none."""
  kwargs = process_arguments(environ)
  try:
    jax.distributed.initialize(**kwargs, initialization_timeout=init_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  except (ValueError, TypeError) as e:  # nothing detected: jax names the missing parameter
    raise UserInputError(
        f"--distributed: {e} Run under SLURM (srun), Open MPI (mpirun), Kubernetes or a Cloud "
        f"TPU VM, or set {', '.join(ENV_VARIABLES)} on every process (see launch/)") from None
