"""What a hostile user (or a bad day) does to a run: diverging training, damaged or mismatched
checkpoints, two runs on one workdir, odd folders. Each case ends in one clear message, and
nothing the user made is lost. Numbered as in the fault test of the issue that found them."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import mvtec_vq
from vqjax import config_checks, experiment, train as train_lib
from vqjax.errors import UserInputError

import toy_method
from conftest import interrupt_at_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _restore(workdir, step):
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager((workdir / "checkpoints").resolve())
  return manager.restore(step)


def _run(config, workdir, images=None, program=None, log=None):
  program = program or toy_method.toy_program(config)
  images = toy_method.toy_images() if images is None else images
  return train_lib.run_training(program, config, images, workdir, log=log or (lambda _: None),
                                show_progress=False)


def _poisoned(program, from_step, scale_loss=1.0, nan_params=True):
  """The toy program whose parameters turn NaN after `from_step` updates (nan_params), or
  whose reported loss is multiplied by scale_loss from then on."""

  def step(state, batch, root_key, frozen):
    new, metrics = program.step(state, batch, root_key, frozen)
    late = state.step >= from_step
    if nan_params:
      new = new.replace(ae=jax.tree.map(lambda p: jnp.where(late, jnp.nan, p), new.ae))
    metrics = dict(metrics, loss=jnp.where(late, metrics["loss"] * scale_loss, metrics["loss"]))
    return new, metrics

  return dataclasses.replace(program, step=step)


# --- case 38: a diverging run must not checkpoint NaNs nor rotate the good ones away ------------


def test_non_finite_state_is_never_checkpointed_and_the_last_good_one_kept(tmp_path):
  # Log rarely (the metric check would not see it), checkpoint often, keep only two.
  config = toy_method.toy_config(num_steps=12, log_every=100, checkpoint_every=2,
                                 max_checkpoints=2)
  program = _poisoned(toy_method.toy_program(config), from_step=5)
  with pytest.raises(FloatingPointError) as error:
    _run(config, tmp_path, program=program)
  assert _steps(tmp_path) == [2, 4]  # 6 would have held NaNs; 2 and 4 were not rotated away
  message = str(error.value)
  assert "last finite checkpoint is step 4" in message
  assert "--config.train.learning_rate=0.001" in message
  for step in (2, 4):
    restored = _restore(tmp_path, step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_a_changed_learning_rate_may_resume_other_model_settings_may_not(tmp_path):
  config = mvtec_vq.get_config("smoke").to_dict()
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "config.json").write_text(json.dumps(config))
  for key in ("learning_rate", "b2", "weight_decay", "end_learning_rate"):
    changed = json.loads(json.dumps(config))
    changed["train"][key] = 1e-5
    experiment.check_workdir(tmp_path, changed)  # allowed: no shape depends on it
  changed = json.loads(json.dumps(config))
  changed["train"]["warmup_steps"] = 5  # adds a step count to the optimizer state
  with pytest.raises(UserInputError, match="train.warmup_steps"):
    experiment.check_workdir(tmp_path, changed)


def test_exploding_loss_is_flagged(tmp_path):
  config = toy_method.toy_config(num_steps=6, log_every=1)
  program = _poisoned(toy_method.toy_program(config), from_step=3, scale_loss=1e6,
                      nan_params=False)
  messages = []
  _run(config, tmp_path, program=program, log=messages.append)
  warnings = [m for m in messages if "diverging" in m]
  assert len(warnings) == 1 and "step 4" in warnings[0], messages


def test_training_set_smaller_than_the_batch_is_flagged(tmp_path):
  config = toy_method.toy_config(num_steps=2, batch_size=4)
  messages = []
  _run(config, tmp_path, images=toy_method.toy_images(n=3), log=messages.append)
  assert any("3 training examples is fewer than train.batch_size 4" in m for m in messages)


# --- train_log.jsonl after a resume ---------------------------------------------------------


def test_resumed_log_has_each_step_once(tmp_path):
  config = toy_method.toy_config(num_steps=4, log_every=1, checkpoint_every=4)
  _run(config, tmp_path)
  log = tmp_path / "train_log.jsonl"
  # A run that logged steps 5 and 6 and died before checkpointing them (torn last line).
  with open(log, "a") as f:
    f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + json.dumps({"step": 6, "loss": 1.0})
            + "\n" + '{"step": 7, "lo')
  with config.unlocked():
    config.train.num_steps = 8
  _run(config, tmp_path)
  steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
  assert steps == list(range(1, 9))


# --- cases 29, 30: a damaged checkpoint --------------------------------------------------------


def _damage(step_dir: pathlib.Path):
  """Truncates the array data files of a checkpoint step to half (a disk that filled up)."""
  data_files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data_files
  for path in data_files:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch):
  config = toy_method.toy_config(num_steps=8, checkpoint_every=2, max_checkpoints=5)
  straight, _ = _run(config, tmp_path / "a")
  undo = interrupt_at_step(monkeypatch, 6)  # Ctrl-C after 6 updates: step 6 saved
  with pytest.raises(KeyboardInterrupt):
    _run(config, tmp_path / "b")
  undo()
  assert _steps(tmp_path / "b")[-2:] == [4, 6]
  _damage(tmp_path / "b" / "checkpoints" / "6")
  messages = []
  resumed, summary = _run(config, tmp_path / "b", log=messages.append)
  assert summary["start_step"] == 4
  assert any("checkpoint step 6" in m and "cannot be read" in m for m in messages), messages
  assert len(list((tmp_path / "b" / "checkpoints_damaged").iterdir())) == 1  # kept, not deleted
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               straight, resumed)


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path):
  config = toy_method.toy_config(num_steps=2, checkpoint_every=2)
  _run(config, tmp_path)
  saved = _steps(tmp_path)
  for step in saved:
    _damage(tmp_path / "checkpoints" / str(step))
  with pytest.raises(UserInputError, match=r"no checkpoint in .* can be restored.*step 2: "):
    _run(config, tmp_path)
  assert _steps(tmp_path) == saved  # nothing moved when nothing restores


# --- case 33: a checkpoint resumed on inputs of another size ----------------------------------


@pytest.mark.parametrize("other,expected", [
    # Same parameter shapes (the toy scales uint8 and floats alike): only the spec can tell.
    (lambda images: images.astype(np.float32) / 255.0, r"\[8, 8, 1\] float32"),
    (lambda images: np.repeat(images, 3, axis=-1), r"\[8, 8, 3\] uint8"),
])
def test_checkpoints_refuse_inputs_of_another_shape_even_without_config_json(tmp_path, other,
                                                                              expected):
  config = toy_method.toy_config(num_steps=2)
  _run(config, tmp_path)
  (tmp_path / "config.json").unlink(missing_ok=True)
  with config.unlocked():
    config.train.num_steps = 4
  with pytest.raises(UserInputError, match=r"trained on examples \[8, 8, 1\] uint8.*" + expected):
    _run(config, tmp_path, images=other(toy_method.toy_images()))


# --- cases 34, 35: two runs on one workdir ---------------------------------------------------


def test_a_second_run_on_a_locked_workdir_stops_naming_the_first(tmp_path):
  with experiment.workdir_lock(tmp_path):
    with pytest.raises(UserInputError, match=rf"in use by another vqjax run \(pid {os.getpid()}"):
      with experiment.workdir_lock(tmp_path):
        pass
  # Released: the next run takes it.
  with experiment.workdir_lock(tmp_path):
    pass


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path):
  child = subprocess.run([sys.executable, "-c", _dying_lock_holder_script(tmp_path)], timeout=120)
  assert child.returncode == -signal.SIGKILL  # died holding the lock
  assert "pid" in (tmp_path / ".vqjax.lock").read_text()
  with experiment.workdir_lock(tmp_path):
    pass


def _dying_lock_holder_script(workdir):
  return (f"import os, signal, pathlib; from vqjax import experiment\n"
          f"with experiment.workdir_lock(pathlib.Path({str(workdir)!r})):\n"
          f"  os.kill(os.getpid(), signal.SIGKILL)\n")


# --- cases 9, 17, 23: input checks ------------------------------------------------------------


@pytest.mark.parametrize("category", ["..", "../x", "a/b", "a\\b", "."])
def test_category_cannot_leave_the_data_root(category):
  config = mvtec_vq.get_config("smoke")
  config.data.category = category
  with pytest.raises(config_checks.ConfigError, match="data.category"):
    config_checks.validate_config(config)


@pytest.mark.parametrize("key,value", [("learning_rate", float("inf")),
                                       ("learning_rate", float("nan")), ("b1", float("nan"))])
def test_non_finite_optimizer_settings_are_refused(key, value):
  config = mvtec_vq.get_config("smoke")
  config.train[key] = value
  with pytest.raises(config_checks.ConfigError, match=f"train.{key}"):
    config_checks.validate_config(config)


def test_a_category_whose_first_file_is_grey_still_loads_in_colour(tmp_path):
  from vqjax.data.mvtec import load_mvtec
  rng = np.random.default_rng(0)
  cat = tmp_path / "mixed"
  for split, count in (("train/good", 4), ("test/good", 2)):
    (cat / split).mkdir(parents=True)
    for i in range(count):
      colour = rng.integers(0, 255, (16, 16, 3), np.uint8)
      image = Image.fromarray(colour).convert("L") if i == 0 else Image.fromarray(colour)
      image.save(cat / split / f"{i:03d}.png")
  dataset = load_mvtec(tmp_path, "mixed", 16, val_fraction=0.0)
  assert dataset.num_channels == 3
  grey = np.asarray(Image.open(cat / "train/good/000.png"))
  np.testing.assert_array_equal(dataset.train.images[0], np.repeat(grey[..., None], 3, -1))


# --- cases 36, 37, SIGINT, a misspelt preset: one line, no traceback --------------------------


def _cli(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "vqjax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.parametrize("make,expected,code", [
    (lambda p: p.write_text("x"), "is a file; expected a folder", 2),
    (lambda p: (p.parent / "blocker").write_text("x"), "check that the workdir", 1),
])
def test_a_workdir_that_cannot_be_a_folder_is_one_line(tmp_path, make, expected, code):
  workdir = tmp_path / "run"
  make(workdir)
  if (tmp_path / "blocker").exists():
    workdir = tmp_path / "blocker" / "run"  # its parent is a file
  done = _cli("--config", "configs/mvtec_vq.py:smoke", f"--config.workdir={workdir}")
  assert done.returncode == code and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert expected in done.stderr


@pytest.mark.parametrize("config_arg,expected", [
    ("configs/mvtec_vq.py:papr", "unknown preset 'papr'"),
    ("configs/no_such.py", "no such file 'configs/no_such.py'"),
])
def test_a_misspelt_config_is_one_line(config_arg, expected):
  done = _cli("--config", config_arg)
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_ctrl_c_saves_and_ends_with_one_message(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      [sys.executable, "-m", "vqjax.main", "--config", "configs/mvtec_vq.py:smoke",
       f"--config.workdir={workdir}", "--config.train.num_steps=100000",
       "--config.train.checkpoint_every=1"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / "2").exists():
      assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
      time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 130, stderr[-2000:]
  assert "Traceback" not in stderr and "rerun the same command to resume" in stderr
  assert stderr.strip().splitlines()[-1] == "error: interrupted"


def test_an_unwritable_workdir_is_one_line(tmp_path, monkeypatch, capsys):
  """Case 36. Tests run as root here, where chmod cannot make a folder read-only, so the
  refusal the OS would give is injected where the run first writes (config.json)."""
  from vqjax import main as cli
  from vqjax import report

  def refuse(path, obj):
    raise PermissionError(13, "Permission denied", str(path))

  from absl import app
  monkeypatch.setattr(report, "write_json", refuse)
  monkeypatch.chdir(REPO)
  argv = ["vqjax", "--config", "configs/mvtec_vq.py:smoke", f"--config.workdir={tmp_path / 'run'}"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  with pytest.raises(SystemExit) as exit_info:
    app.run(cli.main, flags_parser=cli.parse_flags)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (f"error: Permission denied ({tmp_path / 'run' / 'config.json'}): check "
                     "that the workdir / output folder is a writable folder")
