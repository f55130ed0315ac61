"""IGD (Chen et al. 2022): losses and scores against their equations written out here, the
E-step hook (and its resume), the distilled encoder staying frozen, patches and stitching, config
errors, and the CLI end to end on MVTec-layout and one-vs-rest data."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.config_checks import ConfigError, validate_config
from vqjax.config_defaults import load_config_file
from vqjax.methods import get_method
from vqjax.methods.base import check_prediction
from vqjax.methods.igd import DATA_RANGE, IGDAutoencoder, IGDMethod
from vqjax.models.backbones import imagenet_normalize
from vqjax.ops.ms_ssim import GLOBAL_WEIGHTS, LOCAL_WEIGHTS, ms_ssim, ms_ssim_map
from vqjax.ops.tiles import overlapping_patches, stitch_patch_maps

from conftest import interrupt_at_step

SIZE = 48  # 4 local patches of 32 px every 16 px; 5 MS-SSIM scales with a 3 px window fit


def _config(preset="smoke", **overrides):
  config = load_config_file(f"configs/mvtec_igd.py:{preset}")
  config.data.image_size = SIZE
  config.update_from_flattened_dict(overrides)
  return config


def _images(n=8, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.integers(60, 200, (n, SIZE // 4, SIZE // 4, channels))
  images = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
  return np.clip(images + rng.integers(-20, 20, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def method_and_variables():
  config = _config(**{"model.kd_teacher": "none"})
  validate_config(config)
  method = get_method(config, 3)
  params, model_state = method.init_variables(jax.random.key(1))
  rng = np.random.default_rng(2)
  gsvdd = {s: {"center": jnp.asarray(rng.normal(size=8), jnp.float32),
               "sigma2": jnp.float32(1.7)} for s in method.scales}
  return method, {"params": params, "model_state": model_state, "gsvdd": gsvdd}


def test_patches_and_coverage_averaged_stitching():
  rng = np.random.default_rng(0)
  images = rng.random((2, SIZE, SIZE, 3)).astype(np.float32)
  patches = np.asarray(overlapping_patches(jnp.asarray(images), 32, 16))
  assert patches.shape == (8, 32, 32, 3)
  np.testing.assert_array_equal(patches[1], images[0, 0:32, 16:48])  # raster order
  np.testing.assert_array_equal(patches[6], images[1, 16:48, 0:32])
  # Stitching the patches' own pixels gives the image back: the mean of equal values.
  maps = patches[..., 0]
  np.testing.assert_allclose(np.asarray(stitch_patch_maps(jnp.asarray(maps), 2, SIZE, 16)),
                             images[..., 0], rtol=1e-6)
  # Different values per patch: a float64 loop over pixels and the patches covering them.
  values = rng.random((8, 32, 32))
  want = np.zeros((2, SIZE, SIZE))
  for b in range(2):
    for y in range(SIZE):
      for x in range(SIZE):
        covering = [values[b * 4 + k, y - i, x - j]
                    for k, (i, j) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)])
                    if i <= y < i + 32 and j <= x < j + 32]
        want[b, y, x] = np.mean(covering)
  got = np.asarray(stitch_patch_maps(jnp.asarray(values, jnp.float32), 2, SIZE, 16))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with pytest.raises(ValueError, match="do not cover"):
    overlapping_patches(jnp.asarray(images), 32, 10)


def _manual_scale_losses(method, scale, params, batch_stats, gsvdd, x, rng):
  """Eq. 2, 5-8 written out for one scale (loss.interpolate and loss.gsvdd on)."""
  k = method.scales.index(scale)
  ae, critic = method.autoencoders[k], method.critics[k]
  loss = method.loss
  variables = {"params": params["autoencoder"], "batch_stats": batch_stats}
  (z, x_hat), upd = ae.apply(variables, x, train=True, mutable=["batch_stats"])
  weights = GLOBAL_WEIGHTS if scale == "global" else LOCAL_WEIGHTS
  window = loss[f"{scale}_window"]
  l_m = (loss.rho * jnp.mean(jnp.abs(x - x_hat)) / DATA_RANGE
         + (1 - loss.rho) * (1 - jnp.mean(ms_ssim(x, x_hat, weights=weights, window_size=window,
                                                  data_range=DATA_RANGE))))
  h = jnp.exp(-jnp.sum((z - gsvdd["center"]) ** 2, axis=1) / gsvdd["sigma2"])
  alpha = jax.random.uniform(rng, (x.shape[0], 1), maxval=0.5)
  x_alpha, _ = ae.apply({"params": params["autoencoder"], **upd}, alpha * z + (1 - alpha) * z[::-1],
                        train=True, method=IGDAutoencoder.decode, mutable=["batch_stats"])
  d = lambda p, images: critic.apply({"params": p}, images)
  ae_loss = l_m + loss.critic_weight * jnp.mean(d(params["critic"], x_alpha) ** 2) + jnp.mean(1 - h)
  gamma = loss.critic_gamma
  critic_loss = (jnp.mean((d(params["critic"], x_alpha) - alpha[:, 0]) ** 2)
                 + jnp.mean(d(params["critic"], gamma * x + (1 - gamma) * x_hat) ** 2))
  return ae_loss, critic_loss


def test_losses_and_their_gradients_are_eq_5_to_8(method_and_variables):
  """The autoencoder's gradient is that of Eq. 6 + 7 alone, the critic's that of Eq. 5 alone
  (neither loss trains the other network)."""
  method, variables = method_and_variables
  scale = "global"
  x = method.scale_inputs(jnp.asarray(_images(4)))[scale]
  rng = jax.random.key(3)
  params = variables["params"][scale]
  stats = variables["model_state"][scale]["batch_stats"]
  gsvdd = variables["gsvdd"][scale]

  @jax.jit
  def both(params):
    ours = jax.value_and_grad(
        lambda p: method.scale_loss(scale, p, stats, gsvdd, x, rng, False)[0])(params)
    manual = lambda ae, critic: _manual_scale_losses(
        method, scale, {"autoencoder": ae, "critic": critic}, stats, gsvdd, x, rng)
    ae_grad = jax.grad(lambda p: manual(p, params["critic"])[0])(params["autoencoder"])
    critic_grad = jax.grad(lambda p: manual(params["autoencoder"], p)[1])(params["critic"])
    return ours, sum(manual(params["autoencoder"], params["critic"])), ae_grad, critic_grad

  (value, ours), want, ae_grad, critic_grad = both(params)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                                                  atol=1e-6)
  jax.tree.map(close, ours["autoencoder"], ae_grad)
  jax.tree.map(close, ours["critic"], critic_grad)
  assert float(value) == pytest.approx(float(want), rel=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(critic_grad)) > 0


def test_scores_and_maps_are_eq_11_and_12(method_and_variables):
  method, variables = method_and_variables
  images = jnp.asarray(_images(3))
  out = method.predict(variables, images)
  check_prediction(out, method.variants, images.shape)
  x = method.scale_inputs(images)
  per_scale = {}
  for scale in method.scales:
    k = method.scales.index(scale)
    ae_vars = {"params": variables["params"][scale]["autoencoder"],
               **variables["model_state"][scale]}
    z, x_hat = method.autoencoders[k].apply(ae_vars, x[scale])
    kw = dict(weights=GLOBAL_WEIGHTS if scale == "global" else LOCAL_WEIGHTS,
              window_size=method.loss[f"{scale}_window"], data_range=DATA_RANGE)
    err = np.abs(np.asarray(x[scale] - x_hat)) / DATA_RANGE
    lm_map = 0.15 * err.mean(-1) + 0.85 * (1 - np.asarray(ms_ssim_map(x[scale], x_hat, **kw)))
    lm = 0.15 * err.mean((1, 2, 3)) + 0.85 * (1 - np.asarray(ms_ssim(x[scale], x_hat, **kw)))
    g = variables["gsvdd"][scale]
    lh = 1 - np.exp(-np.sum((np.asarray(z) - np.asarray(g["center"])) ** 2, 1) / float(g["sigma2"]))
    per_scale[scale] = (lm_map, lm, lh)
  beta, xi = 0.1, 0.5
  lm_l = per_scale["local"][1].reshape(3, 4).mean(1)
  lh_l = per_scale["local"][2].reshape(3, 4).mean(1)
  lm = beta * per_scale["global"][1] + (1 - beta) * lm_l
  lh = beta * per_scale["global"][2] + (1 - beta) * lh_l
  np.testing.assert_allclose(out["scores"]["igd_reconstruction"], lm, rtol=1e-5)
  np.testing.assert_allclose(out["scores"]["igd"], xi * lm + (1 - xi) * lh, rtol=1e-5)
  # Pixel (0, 0) is covered by patch 0 alone; pixel (20, 20) by all four.
  local_map = per_scale["local"][0].reshape(3, 4, 32, 32)
  m = out["maps"]["igd"]
  want00 = xi * (beta * per_scale["global"][0][:, 0, 0] + (1 - beta) * local_map[:, 0, 0, 0]) + (
      1 - xi) * (beta * per_scale["global"][2] + (1 - beta) * per_scale["local"][2].reshape(3, 4)[:, 0])
  np.testing.assert_allclose(m[:, 0, 0], want00, rtol=1e-5)
  centre = local_map[:, [0, 1, 2, 3], [20, 20, 4, 4], [20, 4, 20, 4]].mean(1)
  want2020 = xi * (beta * per_scale["global"][0][:, 20, 20] + (1 - beta) * centre) + (
      1 - xi) * (beta * per_scale["global"][2] + (1 - beta) * per_scale["local"][2].reshape(3, 4).mean(1))
  np.testing.assert_allclose(m[:, 20, 20], want2020, rtol=1e-5)
  assert out["reconstructions"].shape == (3, SIZE, SIZE, 3)


def test_e_step_is_the_papers_estimate(method_and_variables):
  """mu = mean code, sigma^2 = max(kappa mean |z - mu|^2, 1), local over all patches."""
  method, variables = method_and_variables
  images = _images(5)
  got = method.estimate_gsvdd(variables["params"], variables["model_state"], images)
  x = method.scale_inputs(jnp.asarray(images))
  for k, scale in enumerate(method.scales):
    ae_vars = {"params": variables["params"][scale]["autoencoder"],
               **variables["model_state"][scale]}
    z = np.asarray(method.autoencoders[k].apply(ae_vars, x[scale])[0], np.float64)
    assert len(z) == (5 if scale == "global" else 20)
    center = z.mean(0)
    sigma2 = max(0.5 * np.mean(np.sum((z - center) ** 2, 1)), 1.0)
    np.testing.assert_allclose(got[scale]["center"], center, rtol=1e-5, atol=1e-6)
    assert float(got[scale]["sigma2"]) == pytest.approx(sigma2, rel=1e-5)
  # The floor: a tiny kappa leaves sigma^2 at 1.
  small = dataclasses.replace(method, gsvdd=_with(method.gsvdd, kappa=1e-9))
  floored = small.estimate_gsvdd(variables["params"], variables["model_state"], images)
  assert all(float(floored[s]["sigma2"]) == 1.0 for s in method.scales)


def _with(frozen, **changes):
  import ml_collections
  d = frozen.to_dict()
  d.update(changes)
  return ml_collections.FrozenConfigDict(d)


def _train(config, images, workdir):
  method = get_method(config, 3)
  return method.fit(config, _Data(images), workdir, log=lambda _: None, show_progress=False)


class _Data:
  def __init__(self, images):
    self.train = type("Split", (), {"images": images})()


def test_e_step_hook_runs_at_start_and_periodically_and_resumes(tmp_path, monkeypatch):
  """E-step before step 0 and every 2 steps; a run interrupted after 5 steps and resumed equals
  an uninterrupted one, gsvdd centre included (it is saved with each checkpoint)."""
  config = _config(**{"model.kd_teacher": "none", "model.local": False, "train.num_steps": 7,
                      "train.checkpoint_every": 3, "train.log_every": 1,
                      "gsvdd.em_every_epochs": 1.0})  # 8 images / batch 4 = 2 steps an epoch
  images = _images(8)
  calls = []
  real = IGDMethod.estimate_gsvdd

  def counting(self, params, model_state, data):
    calls.append(len(data))
    return real(self, params, model_state, data)

  monkeypatch.setattr(IGDMethod, "estimate_gsvdd", counting)
  reference, summary = _train(config, images, tmp_path / "straight")
  assert summary["em_every_steps"] == 2
  assert len(calls) == 1 + 7 // 2 and set(calls) == {8}
  assert float(reference["gsvdd"]["global"]["sigma2"]) >= 1.0
  undo = interrupt_at_step(monkeypatch, 5)
  with pytest.raises(KeyboardInterrupt):
    _train(config, images, tmp_path / "resumed")
  undo()
  resumed, _ = _train(config, images, tmp_path / "resumed")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               reference, resumed)


def test_distilled_encoder_stays_frozen():
  """With a distilled encoder, a step changes to_latent, the decoder and the critic only."""
  config = _config(**{"model.local": False})
  method = get_method(config, 3)
  params, model_state = method.init_variables(jax.random.key(5))
  distilled = {"params": {"global": jax.tree.map(lambda a: a + 0.01,
                                                 params["global"]["autoencoder"]["encoder"])},
               "batch_stats": {"global": model_state["global"]["batch_stats"]["encoder"]}}
  program = method.main_program(config.train, 10, 5, distilled)
  state = program.init(jax.random.key(6), None)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               state.params["global"]["autoencoder"]["encoder"], distilled["params"]["global"])
  new, _ = jax.jit(program.step)(state, _images(4), jax.random.key(7), None)
  changed = lambda a, b: jax.tree.leaves(jax.tree.map(
      lambda x, y: bool(np.any(np.asarray(x) != np.asarray(y))), a, b))
  before, after = state.params["global"], new.params["global"]
  assert not any(changed(before["autoencoder"]["encoder"], after["autoencoder"]["encoder"]))
  assert all(changed(before["autoencoder"]["to_latent"], after["autoencoder"]["to_latent"]))
  assert any(changed(before["autoencoder"]["decoder"], after["autoencoder"]["decoder"]))
  assert any(changed(before["critic"], after["critic"]))


def test_teacher_is_vgg16_relu5_3_pooled():
  from vqjax.models.backbones import VGG16
  config = _config()
  method = get_method(config, 3)
  teacher = method.teacher_variables()
  x = imagenet_normalize(jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3)),
                                     jnp.float32))
  full = VGG16(outputs=(28, 29)).apply(teacher.variables, x)
  want = np.maximum(np.asarray(full[28]), 0).mean(axis=(1, 2))
  np.testing.assert_allclose(np.asarray(method.teacher_features(teacher.variables, x)), want,
                             rtol=1e-5, atol=1e-6)
  assert want.shape == (2, 512)


@pytest.mark.parametrize("key,value,message", [
    ("loss.global_window", 11, "loss.global_window"),  # 5 scales of 48 px hold no 11 px window
    ("model.local_stride", 10, "model.local_stride"),
    ("model.feature_dim", 64, "model.feature_dim"),
    ("model.kd_teacher", "resnet50", "model.kd_teacher"),
    ("loss.rho", 1.5, "loss.rho"),
    ("model.global_encoder_widths", (8, 8, 8, 8, 8), "model.global_encoder_widths"),
])
def test_bad_values_are_named(key, value, message):
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
    validate_config(_config(**{key: value}))


def test_missing_teacher_weights_name_the_key(tmp_path):
  from vqjax.errors import UserInputError
  method = get_method(_config(**{"model.kd_weights": str(tmp_path / "none.pth")}), 3)
  with pytest.raises(UserInputError, match=r"config\.model\.kd_weights.*does not exist"):
    method.teacher_variables()


def test_cli_runs_igd_end_to_end_on_mvtec_layout(tmp_path):
  """The smoke preset (distillation from a random VGG16, both scales) on demo data written in
  MVTec's on-disk layout; metrics recomputable from the stored maps and scores."""
  from metric_check import check_against_arrays
  from vqjax.data import demo
  root = tmp_path / "demo"
  demo.generate_demo_dataset(root, num_train=8, num_test_good=3, num_test_per_defect=2,
                             categories=("brick",))
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "vqjax.main", "--config", "configs/mvtec_igd.py:smoke",
       f"--config.data.root={root}", "--config.data.category=brick",
       f"--config.workdir={workdir}", "--config.eval.save_arrays=True"],
      capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["run"]["steps"] == 6
  igd = metrics["run"]["igd"]
  assert igd["scales"] == ["global", "local"] and igd["local_patches_per_image"] == 9
  assert igd["gsvdd"]["global"]["sigma2"] >= 1.0
  arrays = np.load(workdir / "eval_arrays.npz")
  assert arrays["map_igd"].shape == (9, 64, 64)
  igd_variants = ("igd", "igd_reconstruction")
  for variant in igd_variants:
    assert metrics[variant]["per_image_pixel_auroc"] is not None
    check_against_arrays(metrics[variant], arrays, variant, "mean", min_area=4)
  # The exported model (both scales, patches stitched, its own Eq. 11 scores) gives
  # evaluation's maps and scores.
  from model_use_check import check_export_against_evaluation
  names = [str(n) for n in arrays["names"]][-3:]
  check_export_against_evaluation(workdir, [root / "brick" / n for n in names], tmp_path / "use",
                                  {v: arrays[f"map_{v}"][-3:] for v in igd_variants},
                                  {"igd": arrays["score_igd"][-3:]})


@pytest.mark.slow  # the IGD CLI runs in the MVTec test; the idx reader in test_readers
def test_cli_runs_igd_one_vs_rest_on_mnist_idx_files(tmp_path):
  """configs/one_vs_rest_igd.py:smoke on MNIST idx files (the real on-disk format), one class;
  image AUROC of the method's own Eq. 11 score (the sweep table: test_presets.py)."""
  from test_readers import _write_idx_set
  from sklearn.metrics import roc_auc_score
  rng = np.random.default_rng(0)
  _write_idx_set(tmp_path / "mnist", rng, compress=True)
  workdir = tmp_path / "runs" / "{category}"
  out = subprocess.run(
      [sys.executable, "-m", "vqjax.main", "--config", "configs/one_vs_rest_igd.py:smoke",
       "--config.data.dataset=mnist", f"--config.data.root={tmp_path / 'mnist'}",
       "--config.model.kd_teacher=none",  # distillation runs in the MVTec test
       "--config.data.category=3", f"--config.workdir={workdir}",
       "--config.eval.save_arrays=True", "--config.data.val_fraction=0.34"],
      capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = json.loads((tmp_path / "runs" / "3" / "metrics.json").read_text())
  assert metrics["run"]["igd"]["scales"] == ["global"]
  assert metrics["igd"]["pixel_auroc"] is None  # no pixel truth
  arrays = np.load(tmp_path / "runs" / "3" / "eval_arrays.npz")
  assert metrics["igd"]["image_auroc"] == pytest.approx(
      roc_auc_score(arrays["labels"], arrays["score_igd"]), abs=1e-12)
  assert metrics["run"]["num_images"]["test"] == 10


def test_table_5_switches():
  """gsvdd off: no E-step hook and the image score is l_m alone."""
  config = _config(**{"model.kd_teacher": "none", "model.local": False, "loss.gsvdd": False,
                      "loss.interpolate": False})
  validate_config(config)
  method = get_method(config, 3)
  assert method.main_program(config.train, 10, 5, None).hooks == ()
  params, model_state = method.init_variables(jax.random.key(0))
  variables = {"params": params, "model_state": model_state,
               "gsvdd": {"global": {"center": jnp.zeros(8), "sigma2": jnp.float32(1.0)}}}
  out = method.predict(variables, jnp.asarray(_images(2)))
  np.testing.assert_array_equal(out["scores"]["igd"], out["scores"]["igd_reconstruction"])
  np.testing.assert_array_equal(out["maps"]["igd"], out["maps"]["igd_reconstruction"])
