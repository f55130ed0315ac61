"""Device mesh and host->device batch placement (data parallel over a `data` axis)."""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


# The devices of the run in progress in this thread (a per-device sweep runs one category per
# device, each in its own thread); unset: every device of every process.
_run_devices: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "vqjax_run_devices", default=None)


@contextlib.contextmanager
def run_on(devices):
  """Within this block (in this thread) runs use only `devices`, and arrays created without
  a placement land on the first of them."""
  token = _run_devices.set(tuple(devices))
  try:
    with jax.default_device(devices[0]):
      yield
  finally:
    _run_devices.reset(token)


def make_data_mesh() -> Mesh:
  """1-D mesh over every device of every process (or those of `run_on`); batches are split
  along `data`.

  Auto axis: the compiler propagates shardings from the inputs (batch split, params
  replicated), so model code never needs sharding annotations.
  """
  devices = _run_devices.get()
  if devices is None:
    if jax.device_count() != jax.local_device_count() * jax.process_count():
      raise ValueError(f"every process must have as many devices: this one has "
                       f"{jax.local_device_count()}, {jax.process_count()} processes have "
                       f"{jax.device_count()} in all")
    # In process order, so that process p's devices hold rows process_rows() of every batch
    # (jax.make_mesh orders by topology, which need not group a process's devices).
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(tree, mesh: Mesh):
  """Places host values or arrays (identical on every process: parameters, keys, frozen
  weights) on every device of `mesh`. Unlike jax.device_put, this also works when the mesh
  spans other processes' devices."""
  return _replicate_fn(mesh)(tree)


@functools.lru_cache(maxsize=None)  # one jitted identity per mesh (periodic hooks call it)
def _replicate_fn(mesh: Mesh):
  return jax.jit(lambda tree: tree, out_shardings=replicated(mesh))


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def process_rows(batch_size: int) -> slice:
  """This process's contiguous share of the rows of a global batch (the rows its devices
  hold in a `data`-sharded array)."""
  per_process = batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def read_process_rows(data, indices: np.ndarray, batch_size: int) -> np.ndarray:
  """data[indices[process_rows(batch_size)]]: this process's rows of the global batch
  data[indices], and only those read (with data decoded on demand, vqjax.data.files.
  ImageFiles, each process decodes only the images it feeds)."""
  return np.asarray(data[indices[process_rows(batch_size)]])


def put_process_batch(data, indices: np.ndarray, mesh: Mesh) -> jax.Array:
  """The global batch data[indices] (indices identical on every process) as one array
  sharded over `mesh`, each process reading only its rows. The same host code runs on 1 CPU,
  8 GPUs or many hosts (`jax.distributed`)."""
  return put_local_rows(read_process_rows(data, indices, len(indices)), len(indices), mesh)


def put_local_rows(local: np.ndarray, batch_size: int, mesh: Mesh) -> jax.Array:
  """This process's rows (process_rows(batch_size)) of a global batch -> the global array."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local,
                                                (batch_size, *local.shape[1:]))
