"""The methods' own steps, each against an independent computation: dead-code restarts (VQ-VAE
SSIM), the latent-resampling map and eta search (Wang et al. 2020 §3.4, §4.3.3)."""
import dataclasses

import cv2  # a dev dependency: a broken install must fail here, not skip
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mvtec_vq, mvtec_vq_resample
from vqjax.methods import get_method
from vqjax.methods import latent_resampling as latent_resampling_module
from vqjax.models.vqvae import VQVAE

# --- dead-code restarts (VQVAESSIM.post_update) ---------------------------------------------


def _vq_state(num_codes, dim, usage):
  rng = np.random.default_rng(0)
  params = {"codebook": jnp.asarray(rng.standard_normal((num_codes, dim)), jnp.float32),
            "encoder": {"kernel": jnp.asarray(rng.standard_normal((3, 3)), jnp.float32)}}
  model_state = {"batch_stats": {"mean": jnp.ones(4)},
                 "vq_stats": {"usage": jnp.asarray(usage, jnp.float32),
                              "candidates": jnp.asarray(rng.standard_normal((num_codes, dim)),
                                                        jnp.float32)}}
  return params, model_state


def _vq_method(dead_code_threshold):
  config = mvtec_vq.get_config("smoke")
  config.loss.dead_code_threshold = dead_code_threshold
  return get_method(config, 3)


def test_dead_codes_take_the_candidates_and_their_usage_resets():
  method = _vq_method(0.5)
  k, d = method.model.num_codes, method.model.embedding_dim
  usage = np.full(k, 1.0 / k)
  dead = np.zeros(k, bool)
  dead[[0, 5, k - 1]] = True
  usage[dead] = 0.49 / k  # just below threshold / K
  usage[1] = 0.51 / k     # just above: stays
  params, model_state = _vq_state(k, d, usage)
  new_params, new_state = method.post_update(params, model_state)
  codebook, old = np.asarray(new_params["codebook"]), np.asarray(params["codebook"])
  candidates = np.asarray(model_state["vq_stats"]["candidates"])
  np.testing.assert_array_equal(codebook[dead], candidates[dead])
  np.testing.assert_array_equal(codebook[~dead], old[~dead])
  new_usage = np.asarray(new_state["vq_stats"]["usage"])
  np.testing.assert_allclose(new_usage[dead], 1.0 / k)
  np.testing.assert_array_equal(new_usage[~dead], usage[~dead].astype(np.float32))
  # Everything else passes through untouched.
  np.testing.assert_array_equal(new_params["encoder"]["kernel"], params["encoder"]["kernel"])
  np.testing.assert_array_equal(new_state["vq_stats"]["candidates"], candidates)
  np.testing.assert_array_equal(new_state["batch_stats"]["mean"], np.ones(4))


def test_no_restart_when_every_code_is_alive_or_the_threshold_is_zero():
  k = 32
  usage = np.full(k, 1.0 / k)
  usage[3] = 0.0  # dead by any positive threshold
  for threshold, expect_change in ((0.0, False), (0.1, True)):
    method = _vq_method(threshold)
    params, model_state = _vq_state(k, method.model.embedding_dim, usage)
    new_params, new_state = method.post_update(params, model_state)
    changed = not np.array_equal(new_params["codebook"], params["codebook"])
    assert changed == expect_change, threshold
  alive = np.full(k, 1.0 / k)
  params, model_state = _vq_state(k, method.model.embedding_dim, alive)
  new_params, new_state = method.post_update(params, model_state)
  np.testing.assert_array_equal(new_params["codebook"], params["codebook"])
  np.testing.assert_array_equal(new_state["vq_stats"]["usage"], alive.astype(np.float32))


# --- latent-resampling map ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StubPrior:
  """A prior that is sure the code at (i, j) is (i + j) mod K: every other code is unlikely."""
  num_codes: int

  def logits(self, variables, tables):
    h, w = tables.shape[1:]
    best = (jnp.arange(h)[:, None] + jnp.arange(w)[None, :]) % self.num_codes
    one_hot = jax.nn.one_hot(best, self.num_codes)
    return jnp.broadcast_to(8.0 * one_hot, (*tables.shape, self.num_codes))


def _resampling_method(residual):
  config = mvtec_vq_resample.get_config("smoke")
  config.anomaly.residual = residual
  method = get_method(config, 3)
  return dataclasses.replace(method, prior=StubPrior(config.model.num_codes)), config


@pytest.fixture(scope="module")
def resampling_inputs():
  method, _ = _resampling_method("restored_vs_direct")
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  vq = method.vq.init(jax.random.key(0), jnp.asarray(images[:1]))
  return images, {"vqvae": vq, "prior": {}, "eta": jnp.float32(0.01)}


def _decode(method, vq_vars, indices):
  """Decoder output for index tables, straight from the Flax module (MSE model: the image)."""
  eval_vars = {"params": vq_vars["params"], "batch_stats": vq_vars["batch_stats"]}
  return np.asarray(method.vq.model.apply(eval_vars, jnp.asarray(indices),
                                          method=VQVAE.decode_from_indices), np.float64)


@pytest.mark.parametrize("residual", ["restored_vs_direct", "input_vs_output"])
def test_resampling_map_equals_decode_l2_x255_then_opencv_bilateral(resampling_inputs, residual):
  images, variables = resampling_inputs
  method, config = _resampling_method(residual)
  out = jax.jit(method.predict)(variables, images)
  indices = np.asarray(out["indices"])
  restored = np.asarray(out["resampled_indices"])
  direct = _decode(method, variables["vqvae"], indices)
  if residual == "restored_vs_direct":
    # The stub prior makes most codes unlikely: the walk must change some of them.
    assert (restored != indices).mean() > 0.2
    other = _decode(method, variables["vqvae"], restored)
  else:
    np.testing.assert_array_equal(restored, indices)  # the prior plays no part (§4.5)
    other = images.astype(np.float64) / 255.0
  distance = (np.sqrt(np.sum((other - direct) ** 2, axis=-1)) * 255.0).astype(np.float32)
  a = config.anomaly
  expected = np.stack([cv2.bilateralFilter(d, a.bilateral_diameter, a.bilateral_sigma_color,
                                           a.bilateral_sigma_space) for d in distance])
  ours = np.asarray(out["maps"]["resample"])
  assert expected.max() > 1.0  # 0..255 units: the colour term of sigma 75 is active
  # float32 decoding inside jit vs here, then OpenCV's float32 filter (5e-6 x max, see
  # test_bilateral): 1e-4 of the largest value covers both with room.
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * expected.max())
  np.testing.assert_allclose(np.asarray(out["reconstructions"]), np.clip(direct, 0, 1), atol=1e-5)


def test_choose_eta_takes_the_best_validation_auroc_and_the_smaller_eta_on_ties(monkeypatch):
  method, config = _resampling_method("restored_vs_direct")
  grid = (1e-4, 1e-3, 1e-2, 1e-1)
  anomaly = ml_collections.FrozenConfigDict({**config.anomaly.to_dict(), "eta": 0.0,
                                             "eta_grid": grid})
  method = dataclasses.replace(method, anomaly=anomaly)
  val_images = np.zeros((2, 32, 32, 3), np.uint8)

  def fake_predict_split(predict_fn, variables, images, batch_size, mesh):
    # The map carries the eta it was made with, so the fake AUROC below can tell them apart.
    return {"maps": {"resample": np.full(images.shape[:3], float(variables["eta"]))}}

  def run(scores):
    monkeypatch.setattr(latent_resampling_module.metrics, "pixel_auroc",
                        lambda maps, masks: scores[round(float(maps.flat[0]), 8)])
    return method.choose_eta({"eta": jnp.float32(0)}, val_images, config, mesh=None)

  monkeypatch.setattr(latent_resampling_module.inference, "predict_split", fake_predict_split)
  monkeypatch.setattr(latent_resampling_module.inference, "make_predict_fn", lambda *a, **k: None)
  r = lambda e: round(float(np.float32(e)), 8)
  best, search = run({r(1e-4): 0.6, r(1e-3): 0.8, r(1e-2): 0.8, r(1e-1): 0.7})
  assert best == pytest.approx(1e-3) and set(search) == {"0.0001", "0.001", "0.01", "0.1"}
  assert search["0.01"] == 0.8
  best, _ = run({r(1e-4): 0.6, r(1e-3): 0.5, r(1e-2): 0.55, r(1e-1): 0.9})
  assert best == pytest.approx(1e-1)
  best, _ = run({r(1e-4): 0.9, r(1e-3): 0.5, r(1e-2): 0.55, r(1e-1): 0.9})
  assert best == pytest.approx(1e-4)
  # A configured eta skips the search.
  fixed = dataclasses.replace(method, anomaly=ml_collections.FrozenConfigDict(
      {**anomaly.to_dict(), "eta": 5e-4}))
  assert fixed.choose_eta({}, val_images, config, mesh=None) == (5e-4, None)


# --- the method surface (vqjax/methods/base.py) -------------------------------------------------


@pytest.mark.parametrize("name", ["vqvae_ssim", "vqvae_resample"])
def test_registered_methods_expose_the_surface(name):
  from vqjax.methods import METHODS
  from vqjax.methods.base import Method
  for attribute in ("from_config", "check_config", "fit", "predict", "run_info", "variants"):
    assert hasattr(METHODS[name], attribute), (name, attribute)
    assert attribute in dir(Method) or attribute in Method.__annotations__


def test_predictions_keep_the_contract(resampling_inputs):
  from vqjax.methods.base import check_prediction
  images, variables = resampling_inputs
  method, _ = _resampling_method("restored_vs_direct")
  check_prediction(jax.jit(method.predict)(variables, images), method.variants, images.shape)
  vq = method.vq
  check_prediction(jax.jit(vq.predict)(variables["vqvae"], images), vq.variants, images.shape)
  with pytest.raises(ValueError, match="expected the variants"):
    check_prediction({"maps": {"other": np.zeros((3, 32, 32))}}, vq.variants, images.shape)


# --- Wang et al. 2020 §4.3.2 architecture -------------------------------------------------------


def test_wang_architecture_is_the_papers_layer_list():
  # §4.3.2: k4 s2 p1 convs each followed by ReLU (no BatchNorm), one 3x3 s1 p1 conv, residual
  # blocks [ReLU, 3x3, ReLU, 1x1]; here 2 downsamplings, width 8, D = 4 (1x1 projection).
  from flax import traverse_util
  from vqjax.models.vqvae import VQVAE
  model = VQVAE(channels=8, num_downsamplings=2, num_residual_layers=1, num_codes=5,
                embedding_dim=4, out_channels=3, architecture="wang")
  # Shapes only (eval_shape): nothing to compile.
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert set(variables) == {"params"}  # no BatchNorm statistics
  kernels = {"/".join(k[:-1]): v.shape for k, v in
             traverse_util.flatten_dict(variables["params"]["encoder"]).items() if k[-1] == "kernel"}
  assert kernels == {"Conv_0": (4, 4, 3, 8), "Conv_1": (4, 4, 8, 8), "conv_3x3": (3, 3, 8, 8),
                     "ResidualLayer_0/Conv_0": (3, 3, 8, 8), "ResidualLayer_0/Conv_1": (1, 1, 8, 8),
                     "to_embedding": (1, 1, 8, 4)}
  decoder = {"/".join(k[:-1]): v.shape for k, v in
             traverse_util.flatten_dict(variables["params"]["decoder"]).items() if k[-1] == "kernel"}
  assert decoder["from_embedding"] == (1, 1, 4, 8) and decoder["conv_3x3"] == (3, 3, 8, 8)
  assert decoder["ConvTranspose_1"] == (4, 4, 3, 8)  # transpose_kernel: (k, k, out, in)
  logits, aux = jax.eval_shape(model.apply, variables, jnp.zeros((2, 16, 16, 3)))
  assert logits.shape == (2, 16, 16, 3) and aux["z_e"].shape == (2, 4, 4, 4)
  gangloff = VQVAE(channels=8, num_downsamplings=2, num_residual_layers=1, num_codes=5,
                   embedding_dim=4, out_channels=3)
  assert "batch_stats" in jax.eval_shape(gangloff.init, jax.random.key(0),
                                         jnp.zeros((1, 16, 16, 3)))


def test_wang_architecture_trains_and_predicts(tmp_path):
  from vqjax import train as train_lib
  from vqjax.methods.base import check_prediction
  config = mvtec_vq_resample.get_config("smoke")
  config.model.architecture = "wang"
  config.train.num_steps = 12
  method = get_method(config, 3).vq
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  variables, _ = train_lib.train(config, method, images, tmp_path, show_progress=False)
  assert variables["batch_stats"] == {}
  import json
  losses = [json.loads(l)["loss"] for l in (tmp_path / "train_log.jsonl").read_text().splitlines()]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  check_prediction(jax.jit(method.predict)(variables, images[:4]), method.variants, (4, 32, 32, 3))
