"""The trainer hosts methods beyond one loss and one optimizer (tests/toy_method.py): two
optimizers, a periodic hook, frozen pretrained variables; plus the optimizer factory and
training lengths in epochs."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import optax
import pytest

import toy_method
from conftest import interrupt_at_step
from vqjax import train as train_lib
from vqjax.errors import UserInputError
from vqjax.optimizers import learning_rate_schedule, make_optimizer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _train(config, workdir, frozen=None):
  return train_lib.run_training(toy_method.toy_program(config, frozen), config,
                                toy_method.toy_images(), workdir, show_progress=False)


def _log(workdir):
  return [json.loads(l) for l in (workdir / "train_log.jsonl").read_text().splitlines()]


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_toy_trains_and_the_hook_sets_the_centre(tmp_path):
  config = toy_method.toy_config(num_steps=9)
  variables, summary = _train(config, tmp_path)
  assert summary["steps"] == 9
  losses = [r["loss"] for r in _log(tmp_path)]
  assert len(losses) == 9 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses  # it learns
  # The hook ran after step 9: the centre is the mean code of all 12 images under the final AE.
  codes = toy_method.AutoEncoder().apply({"params": variables["ae"]},
                                         toy_method.toy_images() / np.float32(255))[0]
  np.testing.assert_allclose(variables["centre"], np.mean(codes, axis=0), rtol=1e-5, atol=1e-6)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
  # Checkpoints every 2 steps, the hook every 3: interrupted before step 6 runs, the run
  # resumes from the periodic checkpoint of step 6, which must hold that step's hook result.
  config = toy_method.toy_config(num_steps=10)
  reference, _ = _train(config, tmp_path / "straight")
  undo = interrupt_at_step(monkeypatch, 6)
  with pytest.raises(KeyboardInterrupt):
    _train(config, tmp_path / "resumed")
  undo()
  resumed, summary = _train(config, tmp_path / "resumed")
  assert summary["start_step"] == 6
  _assert_trees_equal(reference, resumed)
  straight = [r["loss"] for r in _log(tmp_path / "straight")]
  assert [r["loss"] for r in _log(tmp_path / "resumed")] == straight


def test_frozen_variables_are_unchanged_and_never_checkpointed(tmp_path):
  config = toy_method.toy_config(num_steps=4)
  frozen = toy_method.frozen_variables()
  original = np.array(frozen.variables["w"])
  variables, _ = _train(config, tmp_path, frozen)
  np.testing.assert_array_equal(np.asarray(variables["frozen"]["w"]), original)
  np.testing.assert_array_equal(frozen.variables["w"], original)
  # The checkpoint holds the state fields only: no frozen array, no 8-wide kernel of it.
  import orbax.checkpoint as ocp
  step_dir = tmp_path / "checkpoints" / "4" / "default"
  metadata = ocp.StandardCheckpointer().metadata(step_dir.resolve())
  tree = getattr(metadata, "item_metadata", metadata)
  names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))}
  assert names and not any("frozen" in n or "'w'" in n for n in names), names
  assert {n.split("'")[1] for n in names} == {"step", "ae", "critic", "ae_opt", "critic_opt",
                                              "centre"}
  assert json.loads((tmp_path / "frozen.json").read_text())["sha256"] == "toy-7"


def test_resume_with_other_frozen_weights_is_refused(tmp_path):
  config = toy_method.toy_config(num_steps=2)
  _train(config, tmp_path)
  config.train.num_steps = 4
  with pytest.raises(UserInputError, match="toy seed 7.*toy seed 8"):
    _train(config, tmp_path, toy_method.frozen_variables(seed=8))
  _train(config, tmp_path)  # the same weights resume


_DEVICE_RUN = textwrap.dedent("""
    import json, pathlib, sys
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
    import jax, toy_method
    from vqjax import train as train_lib
    config = toy_method.toy_config(num_steps=6)
    workdir = pathlib.Path(sys.argv[1])
    train_lib.run_training(toy_method.toy_program(config), config, toy_method.toy_images(),
                           workdir, show_progress=False)
    log = [json.loads(l) for l in (workdir / "train_log.jsonl").read_text().splitlines()]
    print(json.dumps({{"devices": jax.device_count(), "losses": [r["loss"] for r in log],
                      "critic": [r["critic_loss"] for r in log]}}))
""")


def test_four_devices_give_the_same_losses_as_one(tmp_path):
  results = {}
  for n in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    code = _DEVICE_RUN.format(tests=str(REPO / "tests"), repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(n))], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results[n] = json.loads(out.stdout.strip().splitlines()[-1])
  assert results[1]["devices"] == 1 and results[4]["devices"] == 4
  # Same global batch split 4 ways: only the order of float32 reductions differs.
  np.testing.assert_allclose(results[4]["losses"], results[1]["losses"], rtol=1e-5)
  np.testing.assert_allclose(results[4]["critic"], results[1]["critic"], rtol=1e-5)


# --- optimizer factory and training lengths ---------------------------------------------------


def _opt(**kw):
  return ml_collections.ConfigDict({"learning_rate": 1e-3, **kw})


def test_default_optimizer_is_plain_adam_with_the_same_state():
  params = {"w": np.ones(3, np.float32)}
  ours = make_optimizer(_opt(), 100)
  grads = {"w": np.array([0.5, -1.0, 2.0], np.float32)}
  a, _ = ours.update(grads, ours.init(params), params)
  b, _ = optax.adam(1e-3).update(grads, optax.adam(1e-3).init(params), params)
  np.testing.assert_array_equal(a["w"], b["w"])
  assert (jax.tree.structure(ours.init(params))
          == jax.tree.structure(optax.adam(1e-3).init(params)))  # old checkpoints restore


def test_schedules_follow_their_formulas():
  warm_poly = learning_rate_schedule(_opt(schedule="polynomial", warmup_steps=10,
                                          decay_power=0.9, end_learning_rate=0.0), 110)
  assert float(warm_poly(0)) == 0.0 and float(warm_poly(5)) == pytest.approx(5e-4)
  assert float(warm_poly(10)) == pytest.approx(1e-3)
  assert float(warm_poly(60)) == pytest.approx(1e-3 * (1 - 50 / 100) ** 0.9, rel=1e-5)
  cosine = learning_rate_schedule(_opt(schedule="cosine", end_learning_rate=1e-4), 100)
  assert float(cosine(50)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-5)
  assert float(cosine(100)) == pytest.approx(1e-4, rel=1e-5)
  assert learning_rate_schedule(_opt(), 100) == 1e-3


def test_adamw_decays_weights_and_frozen_params_do_not_move():
  params = {"trained": np.ones(2, np.float32), "fixed": np.ones(2, np.float32)}
  zero = jax.tree.map(np.zeros_like, params)
  tx = make_optimizer(_opt(optimizer="adamw", weight_decay=0.1, frozen_params=("fixed",)), 10)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["trained"], -1e-3 * 0.1 * np.ones(2), rtol=1e-6)
  np.testing.assert_array_equal(updates["fixed"], 0.0)
  with pytest.raises(ValueError, match="optimizer must be one of"):
    make_optimizer(_opt(optimizer="sgd"), 10)


def test_training_length_in_epochs():
  tc = ml_collections.ConfigDict({"batch_size": 8, "num_steps": 5, "num_epochs": None})
  assert train_lib.resolve_num_steps(tc, 100) == 5
  tc.num_epochs = 2.0
  assert train_lib.resolve_num_steps(tc, 100) == 25  # ceil(200 / 8)
  assert train_lib.steps_per_epoch(tc, 100) == 12
