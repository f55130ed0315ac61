"""Running a per-image function over a batch in chunks, on the CPU only.

XLA's CPU code for a wide elementwise-and-slice pipeline (the SSIM map's five moment images)
walks the whole batch once per fused kernel: past a few images the intermediates leave the
cache and the time grows faster than the batch (batch 32 at 64 px took 6.4x batch 8's,
benchmarks/NOTES.md). A loop over chunks of a few images keeps them in it. GPUs and TPUs gain
nothing from that, so they run the whole batch (`lax.platform_dependent` picks at lowering;
an artifact exported for several platforms carries both).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def in_batch_chunks_on_cpu(fn, chunk: int, *arrays):
  """fn(*arrays) for a fn that treats each image [i] of its arrays [B,...] on its own; on the
  CPU computed `chunk` images at a time (same values: fn sees the same images, fewer at once).

  chunk <= 0, or a batch under 2 * chunk, runs fn on the whole batch. The batch dimension may
  be symbolic (jax.export): then the choice is made at run time.
  """
  if chunk <= 0:
    return fn(*arrays)
  batch = arrays[0].shape[0]
  chunked = lambda *a: _in_chunks(fn, chunk, *a)
  if isinstance(batch, int):
    if batch < 2 * chunk:
      return fn(*arrays)
    cpu = chunked
  else:  # symbolic: a runtime branch (one padded chunk would cost a small batch chunk/B x)
    cpu = lambda *a: lax.cond(jnp.asarray(batch) < 2 * chunk, fn, chunked, *a)
  return lax.platform_dependent(*arrays, cpu=cpu, default=fn)


def _in_chunks(fn, chunk: int, *arrays):
  batch = arrays[0].shape[0]
  steps = -(-batch // chunk)  # ceil; provably >= 1 for a symbolic batch too
  padded = [jnp.pad(a, [(0, steps * chunk - batch)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
  # Chunk s holds images s, s + steps, s + 2 steps, ...: a batch sharded over devices along
  # its first axis stays sharded along `chunk`, so each device loops over its own images.
  strided = [jnp.swapaxes(a.reshape(chunk, steps, *a.shape[1:]), 0, 1) for a in padded]
  out = lax.map(lambda parts: fn(*parts), strided)
  return jax.tree.map(
      lambda o: jnp.swapaxes(o, 0, 1).reshape(steps * chunk, *o.shape[2:])[:batch], out)
