"""Latent resampling of VQ index tables (Wang et al. 2020 §3.3, Eq. 5).

A causal prior (PixelSNAIL) is given as `logits_fn(tables [B,H,W] int32) -> logits [B,H,W,K]`,
where logits[b, i, j] parametrise p(z_ij | z_<ij) in raster order. Walking the table in raster
order, the code k at (m, n) is replaced by argmax_k' p(Z_mn = k' | current prefix) when

    p(Z_mn = k | current prefix) < eta   and   I(m, n) < eta,

I(m, n) being the smallest probability among the bottom half of the 8-neighbourhood of (m, n):
the neighbours after it in raster order, (m, n+1), (m+1, n-1), (m+1, n), (m+1, n+1).

Decisions (the paper is silent; SPEC §2):
- `constraint_from="original"` (default): I(m, n) uses the probabilities of the ORIGINAL table's
  codes from one full pass on the original table; "current" uses the probabilities of the
  neighbours' codes under the table as it stands when (m, n) is visited.
- Neighbours outside the table are left out of the min. The last raster position has none;
  there I = 0, i.e. the constraint holds and the test is p < eta alone.
- `local_constraint=False` drops the I(m, n) < eta term (the ablation of §4.5).
- `interior_only=True` applies Eq. 5 only where the paper defines it, 1 < m < M and 1 < n < N
  (1-based): codes on the table's border are kept. False (default) resamples the border too,
  with the missing neighbours left out of I as above.

`resample_sequential` is the definition (one full pass per position); `resample` gives identical
codes with 1 + (number of changed positions) passes per image, batched continuously.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

CONSTRAINT_SOURCES = ("original", "current")


def code_probabilities(logits: jnp.ndarray, tables: jnp.ndarray):
  """Probability of the present codes and the most likely codes.

  logits [B,H,W,K] (any float dtype), tables [B,H,W] int -> (probs [B,H,W] float32,
  best [B,H,W] int32). `best` is the argmax of the logits (first index on ties).
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(jnp.take_along_axis(log_probs, tables[..., None].astype(jnp.int32), axis=-1))
  return probs[..., 0], jnp.argmax(logits, axis=-1).astype(jnp.int32)


def neighbour_min(probs: jnp.ndarray) -> jnp.ndarray:
  """I(m, n): min of probs [B,H,W] over (m,n+1), (m+1,n-1), (m+1,n), (m+1,n+1) -> [B,H,W].

  Neighbours outside the table are left out; where none exist (the last raster position) the
  result is 0, so the constraint I < eta holds there.
  """
  padded = jnp.pad(probs, ((0, 0), (0, 1), (1, 1)), constant_values=jnp.inf)
  h, w = probs.shape[1:]
  # padded[:, i, j + 1] = probs[:, i, j]; each slice is one neighbour, aligned on (m, n).
  right = padded[:, :h, 2:w + 2]
  below_left = padded[:, 1:h + 1, 0:w]
  below = padded[:, 1:h + 1, 1:w + 1]
  below_right = padded[:, 1:h + 1, 2:w + 2]
  lowest = jnp.minimum(jnp.minimum(right, below_left), jnp.minimum(below, below_right))
  return jnp.where(jnp.isinf(lowest), 0.0, lowest)


def _replace_condition(probs, constraint, eta, local_constraint: bool):
  """Eq. 5's condition, elementwise: p < eta (and I < eta with the local constraint)."""
  condition = probs < eta
  if local_constraint:
    condition = condition & (constraint < eta)
  return condition


def interior_mask(height: int, width: int) -> jnp.ndarray:
  """[H,W] bool: the positions Eq. 5 is defined on, 1 < m < M, 1 < n < N (1-based)."""
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  return (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)


def _check_source(constraint_from: str):
  if constraint_from not in CONSTRAINT_SOURCES:
    raise ValueError(f"constraint_from must be one of {CONSTRAINT_SOURCES}, "
                     f"got {constraint_from!r}")


def resample_sequential(logits_fn, tables: jnp.ndarray, eta, *, local_constraint: bool = True,
                        constraint_from: str = "original",
                        interior_only: bool = False) -> jnp.ndarray:
  """Eq. 5 by its definition: one full `logits_fn` pass per raster position (H*W passes).

  tables [B,H,W] int -> resampled tables [B,H,W] int32. At each position the conditional is read
  from `logits_fn` of the whole current table (earlier replacements included). Slow; it is the
  reference `resample` must equal. jit-able (`lax.fori_loop`); `logits_fn`, `local_constraint`,
  `constraint_from` and `interior_only` are static, `eta` may be traced.
  """
  _check_source(constraint_from)
  tables = tables.astype(jnp.int32)
  batch, height, width = tables.shape
  rows = jnp.arange(batch)
  use_original = local_constraint and constraint_from == "original"
  if use_original:
    original_constraint = neighbour_min(code_probabilities(logits_fn(tables), tables)[0])

  def visit(position, current):
    m, n = position // width, position % width
    probs, best = code_probabilities(logits_fn(current), current)
    constraint = original_constraint if use_original else neighbour_min(probs)
    replace = _replace_condition(probs[rows, m, n], constraint[rows, m, n], eta, local_constraint)
    if interior_only:
      replace = replace & interior_mask(height, width)[m, n]
    return current.at[rows, m, n].set(jnp.where(replace, best[rows, m, n], current[rows, m, n]))

  return lax.fori_loop(0, height * width, visit, tables)


class Resampled(NamedTuple):
  """Output of `resample`."""
  tables: jnp.ndarray      # [N,H,W] int32, the resampled tables
  passes: jnp.ndarray      # [N] int32, prior passes each image needed
  iterations: jnp.ndarray  # int32 scalar, loop iterations = prior calls on `slots` tables each


class _WalkState(NamedTuple):
  iteration: jnp.ndarray            # int32 scalar
  tables: jnp.ndarray               # [N,H*W] int32, current codes of every image
  original_constraint: jnp.ndarray  # [N,H*W] float32, I(m,n) of the original table
  cursor: jnp.ndarray               # [N] int32, every position before it is final
  passes: jnp.ndarray               # [N] int32
  slot_image: jnp.ndarray           # [S] int32, image in each slot; N = empty
  next_image: jnp.ndarray           # int32 scalar, first image not yet given a slot


def resample(logits_fn, tables: jnp.ndarray, eta, *, local_constraint: bool = True,
             constraint_from: str = "original", max_passes: int | None = None,
             slots: int | None = None, interior_only: bool = False) -> Resampled:
  """Eq. 5, exactly as `resample_sequential`, in at most 1 + (number of changes) passes per image.

  tables [N,H,W] int -> Resampled(tables [N,H,W] int32, passes [N] int32, iterations).

  Scheme: each pass runs `logits_fn` on an image's current table and finds the first position
  at or after that image's cursor where Eq. 5 would CHANGE the code (condition true and argmax
  != present code; a true condition with argmax == present code changes nothing and the walk
  goes on). That one change is applied, the cursor moves just past it, and the next pass starts
  there; an image is done when a pass finds no change (or its cursor passes the end, which saves
  the last pass when the final position changed: then passes = changes).

  Why this equals the sequential walk: let c_1 < c_2 < ... be the positions the sequential walk
  changes. When it visits a position q in (c_t, c_{t+1}], its table is the original with the
  changes at c_1..c_t applied -- exactly the table of our pass t (the suffix is untouched in
  both, since only the visited position is ever written). Same table, same `logits_fn` output,
  so the same decision at every such q: no change before c_{t+1}, the same change at c_{t+1}.
  Positions before the cursor are never re-examined, as the walk never revisits them. Causality
  of `logits_fn` is what makes these logits Eq. 5's p(Z_mn | z_<mn), and it means the prefix
  alone fixes them. Requires `logits_fn` to treat images independently (inference mode).

  Batching (continuous, as in LLM serving): `slots` tables (default: all N) go through
  `logits_fn` together in each iteration of one `lax.while_loop`; when an image is done, its
  slot takes the next image not yet started, so an image needing many passes does not hold a
  whole batch of finished ones. Each image's passes -- hence its codes -- do not depend on
  `slots`; only `iterations` does: with slots = N it is max(passes), with fewer slots the prior
  work (iterations x slots) drops towards sum(passes) when a few images need many more passes
  than the rest. `max_passes` (default H*W, which always suffices) caps each image's passes;
  an image cut short is exact up to its cursor and untouched after it. jit-able: `logits_fn`,
  `local_constraint`, `constraint_from`, `max_passes`, `slots` and `interior_only` are static,
  `eta` may be traced.
  """
  _check_source(constraint_from)
  tables = tables.astype(jnp.int32)
  num_images, height, width = tables.shape
  size = height * width
  max_passes = size if max_passes is None else int(max_passes)
  if max_passes < 1:
    raise ValueError(f"max_passes must be at least 1, got {max_passes}")
  slots = num_images if slots is None else int(slots)
  if slots < 1:
    raise ValueError(f"slots must be at least 1, got {slots}")
  if num_images == 0:
    return Resampled(tables, jnp.zeros((0,), jnp.int32), jnp.int32(0))
  slots = min(slots, num_images)
  positions = jnp.arange(size)
  slot_ids = jnp.arange(slots)

  def not_finished(state: _WalkState):
    return jnp.any(state.slot_image < num_images)

  # slots == N: slot i always holds image i, so no gathers or scatters: every array stays
  # elementwise in the image axis, which keeps a batch-sharded call free of collectives.
  in_place = slots == num_images

  def one_pass(state: _WalkState) -> _WalkState:
    occupied = state.slot_image < num_images
    image = jnp.minimum(state.slot_image, num_images - 1)  # empty slots: any table, dropped
    if in_place:
      read = lambda array: array
      write = lambda array, values: jnp.where(
          occupied.reshape((slots,) + (1,) * (values.ndim - 1)), values, array)
    else:
      read = lambda array: array[image]
      target = jnp.where(occupied, state.slot_image, num_images)  # empty slots write nowhere
      write = lambda array, values: array.at[target].set(values, mode="drop")
    current, cursor = read(state.tables), read(state.cursor)
    current_tables = current.reshape(slots, height, width)
    probs, best = code_probabilities(logits_fn(current_tables), current_tables)
    constraint = neighbour_min(probs)
    # An image's first pass sees its original table.
    original_constraint = jnp.where((read(state.passes) == 0)[:, None],
                                    constraint.reshape(slots, size),
                                    read(state.original_constraint))
    if constraint_from == "original":
      constraint = original_constraint.reshape(slots, height, width)
    changes = (_replace_condition(probs, constraint, eta, local_constraint)
               & (best != current_tables))
    if interior_only:
      changes = changes & interior_mask(height, width)[None]
    changes = changes.reshape(slots, size) & (positions[None, :] >= cursor[:, None])
    found = jnp.any(changes, axis=-1)
    first = jnp.argmax(changes, axis=-1)
    # Elementwise (no scatter): the one change per slot, at its first position.
    current = jnp.where(found[:, None] & (positions[None, :] == first[:, None]),
                        best.reshape(slots, size), current)
    cursor = jnp.where(found, first + 1, cursor)
    passes = read(state.passes) + 1
    finished = ~found | (cursor >= size) | (passes >= max_passes)
    # Free slots take the next images in order (in place: there are none left to take).
    free = ~occupied | finished
    if in_place:
      slot_image, next_image = jnp.where(free, num_images, state.slot_image), state.next_image
    else:
      candidate = state.next_image + jnp.cumsum(free) - 1
      slot_image = jnp.where(free, jnp.minimum(candidate, num_images), state.slot_image)
      next_image = jnp.minimum(state.next_image + jnp.sum(free), num_images)
    return _WalkState(state.iteration + 1, write(state.tables, current),
                      write(state.original_constraint, original_constraint),
                      write(state.cursor, cursor), write(state.passes, passes),
                      slot_image.astype(jnp.int32), next_image.astype(jnp.int32))

  state = _WalkState(iteration=jnp.int32(0), tables=tables.reshape(num_images, size),
                     original_constraint=jnp.zeros((num_images, size), jnp.float32),
                     cursor=jnp.zeros((num_images,), jnp.int32),
                     passes=jnp.zeros((num_images,), jnp.int32),
                     slot_image=slot_ids.astype(jnp.int32), next_image=jnp.int32(slots))
  state = lax.while_loop(not_finished, one_pass, state)
  return Resampled(state.tables.reshape(num_images, height, width), state.passes,
                   state.iteration)
