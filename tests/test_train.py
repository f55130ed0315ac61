"""Trainer: learning, exact resume after an interruption, 1 vs 4 devices."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import interrupt_at_step
from configs import mvtec_vq
from vqjax import train as train_lib
from vqjax.methods import get_method

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_images(n=16, size=32, channels=3, seed=0):
  """Smooth random images [n,size,size,channels] uint8 (learnable structure, not noise)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  images = []
  for _ in range(n):
    fx, fy, phase = rng.uniform(1, 3, 2).tolist() + [rng.uniform(0, 6)]
    base = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    images.append(np.stack([base * (0.6 + 0.4 * c / max(channels - 1, 1))
                            for c in range(channels)], -1))
  return (np.asarray(images) * 255).astype(np.uint8)


def _smoke_config(**train_overrides):
  config = mvtec_vq.get_config("smoke")
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _read_log(workdir):
  return [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]


def test_loss_decreases_on_tiny_data(tmp_path):
  config = _smoke_config(num_steps=60, log_every=10, checkpoint_every=60, learning_rate=1e-3)
  images = _tiny_images()
  method = get_method(config, images.shape[-1])
  train_lib.train(config, method, images, tmp_path, show_progress=False)
  losses = [r["loss"] for r in _read_log(tmp_path)]
  assert len(losses) == 6
  assert losses[-1] < 0.9 * losses[0], losses
  assert all(np.isfinite(losses))


def test_batch_indices_cover_each_epoch_once():
  seen = np.concatenate([train_lib.batch_indices(s, 4, 10, seed=3) for s in range(5)])
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
  np.testing.assert_array_equal(train_lib.batch_indices(2, 4, 10, 3),
                                train_lib.batch_indices(2, 4, 10, 3))


def test_resume_after_interruption_gives_same_params(tmp_path, monkeypatch):
  config = _smoke_config(num_steps=7, checkpoint_every=3, log_every=1)
  images = _tiny_images()
  method = get_method(config, 3)
  reference, _ = train_lib.train(config, method, images, tmp_path / "straight", show_progress=False)

  # Interrupt the second run while it fetches the batch of step 5 (after 5 updates).
  undo = interrupt_at_step(monkeypatch, 5)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(config, method, images, tmp_path / "resumed", show_progress=False)
  steps_saved = sorted(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir()
                       if p.name.isdigit())
  assert steps_saved[-1] == 5  # the interrupt handler saved the work done
  undo()
  resumed, summary = train_lib.train(config, method, images, tmp_path / "resumed",
                                     show_progress=False)
  assert summary["start_step"] == 5 and summary["steps"] == 7
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               reference, resumed)


_DEVICE_RUN = textwrap.dedent("""
    import json, pathlib, sys
    import numpy as np, jax
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    from configs import mvtec_vq
    from vqjax import train as train_lib
    from vqjax.methods import get_method
    from test_train import _tiny_images
    config = mvtec_vq.get_config("smoke")
    config.train.num_steps, config.train.log_every = 4, 1
    images = _tiny_images()
    train_lib.train(config, get_method(config, 3), images, pathlib.Path(sys.argv[1]),
                    show_progress=False)
    log = [json.loads(l) for l in (pathlib.Path(sys.argv[1]) / "train_log.jsonl").read_text().splitlines()]
    print(json.dumps({{"devices": jax.device_count(), "losses": [r["loss"] for r in log]}}))
""")


def _losses_with_devices(n, workdir):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu")
  code = _DEVICE_RUN.format(repo=str(REPO), tests=str(REPO / "tests"))
  out = subprocess.run([sys.executable, "-c", code, str(workdir)], env=env, capture_output=True,
                       text=True, check=True, timeout=600)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # the trainer's multi-device path is checked by test_programs.py's twin
def test_four_devices_give_the_same_losses_as_one(tmp_path):
  one = _losses_with_devices(1, tmp_path / "one")
  four = _losses_with_devices(4, tmp_path / "four")
  assert one["devices"] == 1 and four["devices"] == 4
  # Same global batch, BatchNorm statistics over the whole sharded batch: only the
  # order of float32 reductions differs.
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-4)


def test_train_step_compiles_once(tmp_path):
  import chex
  config = _smoke_config(num_steps=3)
  method = get_method(config, 3)
  optimizer = train_lib.make_optimizer(config.train, config.train.num_steps)
  # A state leaf whose dtype/weak-type changes after one update would retrace the step.
  step = jax.jit(chex.assert_max_traces(train_lib.make_train_step(method, optimizer), n=1))
  state = train_lib.init_train_state(method, optimizer, jax.random.key(0), (32, 32, 3))
  images = _tiny_images()[:8]
  for _ in range(3):
    state, _ = step(state, images, jax.random.key(1))
  assert int(state.step) == 3


def test_bfloat16_compute_trains_and_maps_agree_with_float32(tmp_path):
  config = _smoke_config(num_steps=20, checkpoint_every=20, log_every=10)
  images = _tiny_images()
  method32 = get_method(config, 3)
  variables, _ = train_lib.train(config, method32, images, tmp_path, show_progress=False)
  config.model.dtype = "bfloat16"
  method16 = get_method(config, 3)
  # Same trained float32 parameters, bf16 convolutions: maps stay close to float32's.
  batch = jax.numpy.asarray(images[:8], jax.numpy.float32) / 255
  out32, out16 = method32.predict(variables, batch), method16.predict(variables, batch)
  # Bound from bf16 itself, not from a measurement: each of the smoke net's 10 convolutions
  # rounds its operands to bf16's 8-bit significand (relative error <= 2^-8); to first order
  # the errors add, so outputs stay within 10 * 2^-8 = 3.9% (relative L2) of float32's.
  # Measured: 1.3% (reconstructions), 0.9-1.0% (maps).
  bound = 10 * 2.0**-8
  relative = lambda a, b: np.linalg.norm(np.asarray(b) - a) / np.linalg.norm(a)
  r32, r16 = np.asarray(out32["reconstructions"]), np.asarray(out16["reconstructions"])
  assert relative(r32, r16) < bound
  for variant in ("ssim", "ssim_am"):
    a, b = np.asarray(out32["maps"][variant]), np.asarray(out16["maps"][variant])
    assert b.dtype == np.float32
    assert relative(a, b) < bound, variant
  # And a bf16 run trains: finite, decreasing loss; parameters stay float32.
  variables16, _ = train_lib.train(config, method16, images, tmp_path / "bf16", show_progress=False)
  losses = [r["loss"] for r in _read_log(tmp_path / "bf16")]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(variables16["params"]))
