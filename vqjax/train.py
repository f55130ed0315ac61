"""The generic training loop shared by all methods.

A method hands the loop a `TrainProgram`: how to build its state (any pytree with an int32
`step`, e.g. parameters and two optimizer states), one pure `step(state, batch, rng, frozen)`,
periodic hooks, and frozen pretrained variables. The loop owns the rest: one jitted step with
explicit shardings and a donated state; batches a pure function of (seed, step), so a resumed run
sees exactly the batches an uninterrupted one would; orbax checkpoints written atomically and
restored automatically; logging, progress, a stop on non-finite metrics, a save on Ctrl-C.
Frozen variables never reach an optimizer or a checkpoint: they are loaded at start, passed to
the step as a separate (replicated, not donated) argument, and their source and checksum are
recorded in <workdir>/frozen.json and checked on resume.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import pathlib
import signal
import sys
import threading
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
from vqjax.errors import UserInputError
from vqjax.optimizers import make_optimizer


@flax.struct.dataclass
class TrainState:
  """The state of single-loss methods (one optimizer); other programs bring their own."""
  step: jnp.ndarray      # int32 scalar: number of optimiser updates done
  params: Any
  model_state: Any       # non-trained collections, e.g. {'batch_stats': ...}
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class PeriodicHook:
  """fn(state, frozen, data) -> state, run on the host after every `every` steps (e.g. IGD's
  EM re-estimation of its centre). Its result is part of the state, saved in the checkpoint of
  that step, so a resumed run equals an uninterrupted one. data: the training array as stored."""
  every: int
  fn: Callable[[Any, Any, np.ndarray], Any]
  name: str = "hook"
  at_start: bool = False  # also once on the freshly initialised state (not on a resume)


@dataclasses.dataclass(frozen=True)
class FrozenVariables:
  """Pretrained variables that are inputs, not state: info = {'source': ..., 'sha256': ...}."""
  variables: Any
  info: dict


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What a method gives the loop for one training stage.

  init(rng, example_batch [1,...] as stored) -> state, a pytree with an int32 scalar `step`.
  step(state, batch [B,...] as stored, root_key, frozen) -> (state, {name: scalar}); pure,
    jit-able, must add 1 to `step`; metrics include 'loss'. Derive per-step randomness with
    jax.random.fold_in(root_key, state.step).
  variables(state, frozen) -> the variables predict reads.
  progress: {metric name: label} shown in the progress bar besides the loss.
  """
  init: Callable
  step: Callable
  variables: Callable
  hooks: tuple[PeriodicHook, ...] = ()
  frozen: FrozenVariables | None = None
  progress: tuple[tuple[str, str], ...] = ()


def resolve_num_steps(train_config, num_examples: int) -> int:
  """train.num_epochs (when set and > 0) in steps of train.batch_size, else train.num_steps."""
  epochs = train_config.get("num_epochs") if hasattr(train_config, "get") else None
  if epochs:
    return math.ceil(epochs * num_examples / train_config.batch_size)
  return train_config.num_steps


def steps_per_epoch(train_config, num_examples: int) -> int:
  """Updates per pass over num_examples (at least 1): for hooks given in epochs."""
  return max(1, round(num_examples / train_config.batch_size))


def batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> np.ndarray:
  """Example indices [batch_size] of the batch at `step`: a fresh permutation per epoch."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    out[epochs == epoch] = perm[offsets[epochs == epoch]]
  return out


def init_train_state(method, optimizer, rng, example_shape, example_dtype=jnp.uint8,
                     param_overrides: dict | None = None) -> TrainState:
  """State for inputs like one example of shape `example_shape` (images, index tables...).

  param_overrides: {top-level parameter name: initial value} replacing the method's init (a
  data-dependent initialisation computed by the method before training)."""
  variables = method.init(rng, jnp.zeros((1, *example_shape), example_dtype))
  params = dict(variables["params"])
  for name, value in (param_overrides or {}).items():
    if name not in params or jnp.shape(params[name]) != jnp.shape(value):
      raise ValueError(f"param_overrides[{name!r}] does not match a parameter of that shape")
    params[name] = jnp.asarray(value, params[name].dtype)
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params))


def make_train_step(method, optimizer, with_frozen: bool = False) -> Callable:
  """(state, batch [B,...] as stored, root_key, frozen) -> (state, metrics) for a method with
  one loss(params, model_state, batch, rng) -> (loss, (model_state, metrics)) (with
  with_frozen: loss(..., frozen=frozen variables)) and an optional post_update(params,
  model_state); pure, jit-able.

  The batch goes to the method as it is stored on the host (e.g. uint8 images, int32
  index tables): conversion happens on device, inside the method.
  """

  def train_step(state: TrainState, batch, root_key, frozen=None):
    rng = jax.random.fold_in(root_key, state.step)
    loss_fn = functools.partial(method.loss, frozen=frozen) if with_frozen else method.loss
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
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


def single_loss_program(method, train_config, num_steps: int, example_shape, example_dtype, *,
                        frozen: FrozenVariables | None = None,
                        param_overrides: dict | None = None) -> TrainProgram:
  """The program of a method with init/loss(/post_update): one optimizer over all params.
  With frozen variables, loss gets them as `frozen=` and predict's variables hold them under
  'frozen'."""
  optimizer = make_optimizer(train_config, num_steps)
  step = make_train_step(method, optimizer, with_frozen=frozen is not None)

  def variables(state, frozen_variables):
    extra = {} if frozen is None else {"frozen": frozen_variables}
    return {"params": state.params, **state.model_state, **extra}

  return TrainProgram(
      init=lambda rng, _: init_train_state(method, optimizer, rng, example_shape, example_dtype,
                                           param_overrides),
      step=step, variables=variables, frozen=frozen,
      progress=tuple(getattr(method, "progress_metrics", ())))


def _checkpoint_manager(workdir: pathlib.Path, train_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.max_checkpoints,
      save_interval_steps=train_config.checkpoint_every,
      # Synchronous: the state buffers are donated to the next step.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager((workdir / "checkpoints").resolve(), options=options)


class _ScalarLog:
  """Appends scalars to <workdir>/train_log.jsonl and TensorBoard event files
  (process 0 only; the others keep no log). Rows after `start_step` (logged by a run that
  died before its next checkpoint) are dropped first, so a resumed run logs each step once."""

  def __init__(self, workdir: pathlib.Path, start_step: int):
    from tensorboardX import SummaryWriter  # local: only the trainer writes events
    self._enabled = jax.process_index() == 0
    if self._enabled:
      path = workdir / "train_log.jsonl"
      if path.exists():
        _truncate_log(path, start_step)
      self._jsonl = open(path, "a", encoding="utf-8")
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


def _truncate_log(path: pathlib.Path, last_step: int) -> None:
  """Keeps the rows of train_log.jsonl up to last_step (and drops a torn last line)."""
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and row.get("step", 0) <= last_step:
      kept.append(line)
  from vqjax.report import write_text  # local: report imports matplotlib
  write_text(path, "".join(f"{line}\n" for line in kept))


@jax.jit
def all_finite(tree) -> jnp.ndarray:
  """True iff every floating-point leaf of `tree` is finite (one device reduction)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# Loss growth (vs the first logged loss) that is flagged as a divergence in the making.
EXPLODING_LOSS_FACTOR = 1e3


def train(config, method, train_data: np.ndarray, workdir: pathlib.Path, *,
          log: Callable[[str], None] = print, show_progress: bool = True,
          frozen: FrozenVariables | None = None, param_overrides: dict | None = None
          ) -> tuple[dict, dict]:
  """Trains a single-loss method (init/loss/post_update) on train_data [N,...] with
  config.train and config.seed. Returns (variables for predict, summary)."""
  num_steps = resolve_num_steps(config.train, len(train_data))
  program = single_loss_program(method, config.train, num_steps, train_data.shape[1:],
                                train_data.dtype, frozen=frozen, param_overrides=param_overrides)
  return run_training(program, config, train_data, workdir, log=log, show_progress=show_progress)


def _check_frozen_source(workdir: pathlib.Path, frozen: FrozenVariables | None) -> None:
  """Records the frozen variables' source and checksum; refuses a resume with other ones."""
  path = workdir / "frozen.json"
  if frozen is None:
    return
  if path.exists() and (workdir / "checkpoints").exists():
    saved = json.loads(path.read_text())
    if saved.get("sha256") != frozen.info.get("sha256"):
      raise UserInputError(
          f"workdir {workdir} was trained with frozen weights {saved.get('source')!r} "
          f"(sha256 {saved.get('sha256')}), but this run loads {frozen.info.get('source')!r} "
          f"(sha256 {frozen.info.get('sha256')}). Pass the same weights, or a new "
          "--config.workdir.")
  if jax.process_index() == 0:
    from vqjax.report import write_json  # local: report imports matplotlib
    write_json(path, frozen.info)


def _check_data_spec(workdir: pathlib.Path, train_data: np.ndarray) -> None:
  """Records the shape and dtype of one training example beside the checkpoints and refuses a
  resume on other inputs: a conv net's parameters fit any image size, so restoring alone
  would not notice a 64x64 run resumed at 32x32 (e.g. with config.json deleted)."""
  path = workdir / "checkpoints" / "data_spec.json"
  spec = {"example_shape": list(train_data.shape[1:]), "dtype": str(train_data.dtype)}
  if path.exists():
    saved = json.loads(path.read_text())
    if saved != spec:
      raise UserInputError(
          f"checkpoints in {path.parent} were trained on examples {saved['example_shape']} "
          f"{saved['dtype']}, but this run feeds {spec['example_shape']} {spec['dtype']} (other "
          "data.image_size or channels?). Use the run's settings, or a new --config.workdir.")
  elif jax.process_index() == 0:
    from vqjax.report import write_json  # local: report imports matplotlib
    write_json(path, spec)


def _first_line(error: Exception, limit: int) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def _restore_newest_good(manager, abstract, workdir: pathlib.Path, train_config, log):
  """Restores the newest checkpoint that reads back; a damaged newer one (a truncated file,
  a disk that filled up) is moved to <workdir>/checkpoints_damaged/ with a warning. When
  none restores, the checkpoints do not fit this model: a clear error, nothing moved."""
  root = workdir / "checkpoints"
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
      failures.append((step, e))
      continue
    if failures:
      # Every process decides alike (each failed on the same steps); process 0 moves the
      # damaged steps, then all rebuild their managers so they agree on the latest step.
      if jax.process_index() == 0:
        damaged = workdir / "checkpoints_damaged"
        damaged.mkdir(exist_ok=True)
        for bad_step, error in failures:
          log(f"WARNING: checkpoint step {bad_step} in {root} cannot be read "
              f"({_first_line(error, 200)}); "
              f"moved to {damaged}; resuming from step {step}")
          (root / str(bad_step)).rename(damaged / f"{bad_step}-{int(time.time())}")
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # local: multi-host only
        multihost_utils.sync_global_devices("vqjax: damaged checkpoints moved")
      manager.close()
      manager = _checkpoint_manager(workdir, train_config)
    log(f"resuming from checkpoint step {step} in {root}")
    return state, manager
  causes = "; ".join(f"step {s}: {_first_line(e, 300)}" for s, e in failures)
  raise UserInputError(
      f"no checkpoint in {root} can be restored into this config's model (written by a run "
      f"with other model settings or another vqjax version's parameter layout, or damaged). "
      f"Use a new --config.workdir, or delete {root} to start over. Causes: {causes}")


class _BatchReader:
  """This process's rows of each global batch (sharding.process_rows), read one step ahead
  in a background thread so that decoding images on demand overlaps the device's step."""

  def __init__(self, data, batch_size: int):
    self._data = data
    self._batch_size = batch_size
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vqjax-batches")
    self._ahead: tuple[int, concurrent.futures.Future] | None = None

  def _read(self, indices: np.ndarray) -> np.ndarray:
    return sharding.read_process_rows(self._data, indices, self._batch_size)

  def local_rows(self, step: int, indices: np.ndarray) -> np.ndarray:
    if self._ahead is not None and self._ahead[0] == step:
      return self._ahead[1].result()
    return self._read(indices)

  def read_ahead(self, step: int, indices: np.ndarray) -> None:
    self._ahead = (step, self._pool.submit(self._read, indices))

  def close(self):
    self._pool.shutdown(wait=True, cancel_futures=True)


# Set by a caller that runs trainings in threads (vqjax.experiment's per-device sweep): when
# the event is set, the run in this thread stops after its current step, as on Ctrl-C.
_stop_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "vqjax_stop_event", default=None)


@contextlib.contextmanager
def stop_when(event: threading.Event):
  """Trainings started in this block (in this thread) stop after their current step, saving
  it, once `event` is set."""
  token = _stop_event.set(event)
  try:
    yield
  finally:
    _stop_event.reset(token)


class _StopOnCtrlC:
  """While installed, the first Ctrl-C (SIGINT) only asks the loop to stop after the current step,
  so it never lands inside a checkpoint write (orbax's threads would be torn down mid-save);
  a second Ctrl-C interrupts at once. Only in the main thread (where signals arrive)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True

  def install(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)

  def uninstall(self):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def run_training(program: TrainProgram, config, train_data: np.ndarray, workdir: pathlib.Path, *,
                 log: Callable[[str], None] = print, show_progress: bool = True
                 ) -> tuple[dict, dict]:
  """Runs `program` on train_data [N,...] (uint8 images, int32 index tables...) with
  config.train (batch_size, num_steps or num_epochs, log/checkpoint intervals) and
  config.seed; resumes from the latest checkpoint in workdir/checkpoints.

  Returns (program.variables(state, frozen), summary: start_step, steps, compile_seconds,
  train_seconds).
  """
  tc = config.train
  block = config.get("train_block", "train")  # the config block tc came from, for messages
  num_steps = resolve_num_steps(tc, len(train_data))
  workdir.mkdir(parents=True, exist_ok=True)
  _check_frozen_source(workdir, program.frozen)
  mesh = sharding.make_data_mesh()
  replicated = sharding.replicated(mesh)
  example = jnp.zeros((1, *train_data.shape[1:]), train_data.dtype)
  init_fn = lambda rng: program.init(rng, example)
  root_key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(root_key)
  frozen = None if program.frozen is None else sharding.put_replicated(program.frozen.variables,
                                                                         mesh)

  _check_data_spec(workdir, train_data)
  manager = _checkpoint_manager(workdir, tc)
  if manager.latest_step() is None:
    state = jax.jit(init_fn, out_shardings=replicated)(init_key)
    for hook in program.hooks:
      if hook.at_start:
        state = hook.fn(state, frozen, train_data)
  else:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init_fn, init_key))
    state, manager = _restore_newest_good(manager, abstract, workdir, tc, log)
  train_step = jax.jit(program.step,
                       in_shardings=(replicated, sharding.batch_sharded(mesh), replicated,
                                     replicated),
                       out_shardings=(replicated, replicated), donate_argnums=(0,))
  step_key = sharding.put_replicated(step_key, mesh)

  start = int(state.step)
  if len(train_data) < tc.batch_size:
    log(f"WARNING: {len(train_data)} training examples is fewer than train.batch_size "
        f"{tc.batch_size}: every batch repeats examples")
  scalar_log = _ScalarLog(workdir, start)
  # In a log file (no terminal) redraw rarely instead of many times a second.
  progress = tqdm.tqdm(total=num_steps, initial=start, desc="train", unit="step",
                       disable=not show_progress or jax.process_index() != 0,
                       dynamic_ncols=True,
                       mininterval=0.1 if sys.stderr.isatty() else 30.0)
  summary = {"start_step": start, "compile_seconds": 0.0, "train_seconds": 0.0}
  t_window, examples_in_window = time.perf_counter(), 0
  t_start = time.perf_counter()
  hooks_pending = False
  first_loss = None

  def diverged(what: str) -> FloatingPointError:
    return FloatingPointError(
        f"{what}; the last finite checkpoint is step {manager.latest_step()} in "
        f"{workdir / 'checkpoints'}: rerun the same command with a lower learning rate (e.g. "
        f"--config.{block}.learning_rate={tc.learning_rate / 10:g}; optimisation settings may "
        "change on resume) or model.dtype=float32")

  def save(step: int, force: bool = False) -> None:
    """Saves only a finite state: a checkpoint of NaNs would be resumed forever, and the good
    ones would rotate away behind it."""
    if not force and not manager.should_save(step):
      return
    if not bool(all_finite(state)):
      raise diverged(f"the training state became non-finite (NaN/inf) by step {step}; not "
                     "checkpointed")
    manager.save(step, args=ocp.args.StandardSave(state), force=force)

  reader = _BatchReader(train_data, tc.batch_size)
  ctrl_c = _StopOnCtrlC()
  external_stop = _stop_event.get()

  def stop_requested(step: int, last: bool = False) -> bool:
    """Ctrl-C here, or a stop asked by whoever runs this (a per-device sweep). Several
    processes must stop at the same step (the next one is a collective), so they agree on it,
    at log steps only: that is one small all-gather every log_every steps."""
    local = ctrl_c.requested or (external_stop is not None and external_stop.is_set())
    if jax.process_count() == 1:
      return local
    if not last and step % tc.log_every != 0:
      return False
    from jax.experimental import multihost_utils  # local: multi-host only
    return bool(np.any(multihost_utils.process_allgather(np.asarray(local))))

  try:
    ctrl_c.install()
    for step in range(start, num_steps):
      if stop_requested(step):
        raise KeyboardInterrupt
      idx = batch_indices(step, tc.batch_size, len(train_data), config.seed)
      batch = sharding.put_local_rows(reader.local_rows(step, idx), tc.batch_size, mesh)
      state, metrics = train_step(state, batch, step_key, frozen)
      if step == start:
        jax.block_until_ready(state)  # first call = compile + run; timed apart
        summary["compile_seconds"] = time.perf_counter() - t_start
        t_window, examples_in_window = time.perf_counter(), 0
      else:
        examples_in_window += tc.batch_size
      done = step + 1
      hooks_pending = True  # a state saved between the step and its hooks would resume wrong
      for hook in program.hooks:
        if done % hook.every == 0:
          state = hook.fn(state, frozen, train_data)
      hooks_pending = False
      if done % tc.log_every == 0 or done == num_steps:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(np.isfinite(v) for v in scalars.values()):
          raise diverged(f"non-finite training metrics at step {done}: {scalars}")
        if first_loss is None:
          first_loss = abs(scalars["loss"])
        elif abs(scalars["loss"]) > EXPLODING_LOSS_FACTOR * max(first_loss, 1e-6):
          log(f"WARNING: loss {scalars['loss']:.4g} at step {done} is over "
              f"{EXPLODING_LOSS_FACTOR:g}x the first logged loss ({first_loss:.4g}): training "
              f"is diverging; consider a lower {block}.learning_rate")
          first_loss = abs(scalars["loss"])  # warn again only after another such growth
        elapsed = time.perf_counter() - t_window
        scalars["images_per_second"] = examples_in_window / elapsed if examples_in_window else 0.0
        scalar_log.write(done, scalars)
        postfix = {"loss": f"{scalars['loss']:.4f}", "img/s": f"{scalars['images_per_second']:.3g}"}
        postfix.update({label: f"{scalars[k]:.2f}" for k, label in program.progress
                        if k in scalars})
        progress.set_postfix(postfix)
        t_window, examples_in_window = time.perf_counter(), 0
      progress.update(1)
      save(done)
      if done < num_steps:  # read the next batch's rows while the devices run this step
        reader.read_ahead(done, batch_indices(done, tc.batch_size, len(train_data), config.seed))
    if stop_requested(num_steps, last=True):  # Ctrl-C during the last step: stop here,
      # not in the next stage
      raise KeyboardInterrupt
  except KeyboardInterrupt:
    # Keep the work done so far; a rerun with the same workdir resumes from here.
    try:
      if not hooks_pending and manager.latest_step() != int(state.step):
        save(int(state.step), force=True)
    except (RuntimeError, FloatingPointError):  # mid-step (donated state) or non-finite
      pass
    log(f"interrupted: latest checkpoint is step {manager.latest_step()} in "
        f"{workdir / 'checkpoints'}; rerun the same command to resume")
    raise
  finally:
    ctrl_c.uninstall()
    reader.close()
    progress.close()
    scalar_log.close()
  if num_steps > start and manager.latest_step() != num_steps:
    save(num_steps, force=True)
  manager.wait_until_finished()
  manager.close()
  summary["train_seconds"] = time.perf_counter() - t_start
  summary["steps"] = int(state.step)
  return program.variables(state, frozen), summary
