"""The generic training loop shared by all methods.

One jitted step (`make_train_step`) with explicit shardings and a donated state; batches
are a pure function of (seed, step) so a resumed run sees exactly the batches an
uninterrupted one would; orbax checkpoints are written atomically and restored automatically.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from vqjax import sharding


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray      # int32 scalar: number of optimiser updates done
  params: Any
  model_state: Any       # non-trained collections, e.g. {'batch_stats': ...}
  opt_state: Any


def make_optimizer(train_config) -> optax.GradientTransformation:
  return optax.adam(train_config.learning_rate)


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> np.ndarray:
  """Example indices [batch_size] of the batch at `step`: a fresh permutation per epoch."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    out[epochs == epoch] = perm[offsets[epochs == epoch]]
  return out


def init_train_state(method, optimizer, rng, example_shape, example_dtype=jnp.uint8) -> TrainState:
  """State for inputs like one example of shape `example_shape` (images, index tables...)."""
  variables = method.init(rng, jnp.zeros((1, *example_shape), example_dtype))
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params))


def make_train_step(method, optimizer) -> Callable:
  """(state, batch [B,...] as stored, root_key) -> (state, metrics); pure, jit-able.

  The batch goes to the method as it is stored on the host (e.g. uint8 images, int32
  index tables): conversion happens on device, inside the method.
  """

  def train_step(state: TrainState, batch, root_key):
    rng = jax.random.fold_in(root_key, state.step)
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (_, (model_state, metrics)), grads = grad_fn(state.params, state.model_state, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if hasattr(method, "post_update"):  # e.g. VQ dead-code restarts
      params, model_state = method.post_update(params, model_state)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params), update_norm=optax.tree.norm(updates))
    return TrainState(step=state.step + 1, params=params, model_state=model_state,
                      opt_state=opt_state), metrics

  return train_step


def _checkpoint_manager(workdir: pathlib.Path, train_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.max_checkpoints,
      save_interval_steps=train_config.checkpoint_every,
      # Synchronous: the state buffers are donated to the next step.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager((workdir / "checkpoints").resolve(), options=options)


class _ScalarLog:
  """Appends scalars to <workdir>/train_log.jsonl and TensorBoard event files
  (process 0 only; the others keep no log)."""

  def __init__(self, workdir: pathlib.Path):
    from tensorboardX import SummaryWriter  # local: only the trainer writes events
    self._enabled = jax.process_index() == 0
    if self._enabled:
      self._jsonl = open(workdir / "train_log.jsonl", "a", encoding="utf-8")
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]):
    if not self._enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(f"train/{name}", value, step)

  def close(self):
    if not self._enabled:
      return
    self._jsonl.close()
    self._tb.close()


def train(config, method, train_images: np.ndarray, workdir: pathlib.Path, *,
          log: Callable[[str], None] = print, show_progress: bool = True) -> tuple[dict, dict]:
  """Trains `method` on train_images [N,...] (uint8 images, or whatever the method's loss
  takes) with config.train and config.seed; resumes from the latest checkpoint.

  Returns (variables for `method.predict`, timing/summary dict).
  """
  tc = config.train
  mesh = sharding.make_data_mesh()
  replicated = sharding.replicated(mesh)
  optimizer = make_optimizer(tc)
  init_fn = lambda rng: init_train_state(method, optimizer, rng, train_images.shape[1:],
                                         train_images.dtype)
  root_key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(root_key)

  manager = _checkpoint_manager(workdir, tc)
  latest = manager.latest_step()
  if latest is None:
    state = jax.jit(init_fn, out_shardings=replicated)(init_key)
  else:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init_fn, init_key))
    try:
      state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError) as e:
      raise ValueError(
          f"checkpoint {workdir / 'checkpoints'} step {latest} does not fit this config's model "
          f"(written by a run with other model settings, or by a vqjax version whose model had "
          f"another parameter layout?). Use a new config.workdir. "
          f"Cause: {e}") from e
    log(f"resuming from checkpoint step {latest} in {workdir / 'checkpoints'}")

  train_step = jax.jit(make_train_step(method, optimizer),
                       in_shardings=(replicated, sharding.batch_sharded(mesh), replicated),
                       out_shardings=(replicated, replicated), donate_argnums=(0,))
  step_key = jax.device_put(step_key, replicated)

  start = int(state.step)
  scalar_log = _ScalarLog(workdir)
  # In a log file (no terminal) redraw rarely instead of many times a second.
  progress = tqdm.tqdm(total=tc.num_steps, initial=start, desc="train", unit="step",
                       disable=not show_progress, dynamic_ncols=True,
                       mininterval=0.1 if sys.stderr.isatty() else 30.0)
  summary = {"start_step": start, "compile_seconds": 0.0, "train_seconds": 0.0}
  t_window, images_in_window = time.perf_counter(), 0
  t_start = time.perf_counter()
  step = start
  try:
    for step in range(start, tc.num_steps):
      idx = batch_indices(step, tc.batch_size, len(train_images), config.seed)
      batch = sharding.put_global_batch(train_images[idx], mesh)
      state, metrics = train_step(state, batch, step_key)
      if step == start:
        jax.block_until_ready(state)  # first call = compile + run; timed apart
        summary["compile_seconds"] = time.perf_counter() - t_start
        t_window, images_in_window = time.perf_counter(), 0
      else:
        images_in_window += tc.batch_size
      done = step + 1
      if done % tc.log_every == 0 or done == tc.num_steps:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(np.isfinite(v) for v in scalars.values()):
          raise FloatingPointError(f"non-finite training metrics at step {done}: {scalars}; "
                                   "lower train.learning_rate or use model.dtype=float32")
        elapsed = time.perf_counter() - t_window
        scalars["images_per_second"] = images_in_window / elapsed if images_in_window else 0.0
        scalar_log.write(done, scalars)
        postfix = {"loss": f"{scalars['loss']:.4f}", "img/s": f"{scalars['images_per_second']:.3g}"}
        if "codebook_usage" in scalars:
          postfix["codes used"] = f"{scalars['codebook_usage']:.2f}"
        progress.set_postfix(postfix)
        t_window, images_in_window = time.perf_counter(), 0
      progress.update(1)
      manager.save(done, args=ocp.args.StandardSave(state))
  except KeyboardInterrupt:
    # Keep the work done so far; a rerun with the same workdir resumes from here.
    try:
      if manager.latest_step() != int(state.step):
        manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
    except RuntimeError:  # interrupted mid-step: the state was donated; keep the last save
      pass
    log(f"interrupted: latest checkpoint is step {manager.latest_step()} in "
        f"{workdir / 'checkpoints'}; rerun the same command to resume")
    raise
  finally:
    progress.close()
    scalar_log.close()
  if tc.num_steps > start and manager.latest_step() != tc.num_steps:
    manager.save(tc.num_steps, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  manager.close()
  summary["train_seconds"] = time.perf_counter() - t_start
  summary["steps"] = int(state.step)
  variables = {"params": state.params, **state.model_state}
  return variables, summary
