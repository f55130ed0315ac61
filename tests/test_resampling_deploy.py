"""The PyTorch twin of latent resampling (benchmarks/torch_reference/latent_resampling.py, the
deploy rows' reference) against vqjax: the prior's logits, the walk's codes and the maps; and
the deploy rows built on it (`benchmarks.run --parts deploy_resample`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import jax_cases, torch_cases
from benchmarks.torch_reference import latent_resampling as tlr
from configs import mvtec_vq_resample
from tests.bench_helpers import run_smoke_benchmark
from vqjax.methods.latent_resampling import LatentResampling
from vqjax.ops.bilateral import bilateral_filter
from vqjax.ops.latent_resampling import resample


@pytest.fixture(scope="module")
def case():
  config = mvtec_vq_resample.get_config("default")
  method = LatentResampling.from_config(config, 3)
  vq = jax_cases.random_variables(method.vq, (32, 32, 3), seed=3)
  # A random prior spreads its probabilities near 1/K: eta around 1/K changes some codes.
  # 8x8 tables (32 px images): each walk is up to 64 passes of the prior.
  tables = np.random.default_rng(0).integers(0, config.model.num_codes, (2, 8, 8), np.int32)
  prior = jax_cases.resampling_variables(method, (32, 32, 3), seed=1)["prior"]
  torch_prior = tlr.PixelSNAIL.from_config(config.prior, config.model.num_codes,
                                           prior["params"])
  return config, method, vq, prior, torch_prior, tables


def test_pixelsnail_twin_logits_and_walk_equal_vqjax(case):
  config, method, _, prior, torch_prior, tables = case
  want = np.asarray(method.prior.logits(prior, jnp.asarray(tables)))
  with torch.no_grad():
    got = torch_prior(torch.from_numpy(tables).long()).numpy()
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert np.abs(want).max() > 0.5
  walks = {flag: jax.jit(lambda t, eta, flag=flag: resample(
      lambda x: method.prior.logits(prior, x), t, eta, interior_only=flag).tables)
           for flag in (False, True)}
  for eta, interior_only in ((0.01, False), (0.0078, True)):
    walked = np.asarray(walks[interior_only](jnp.asarray(tables), eta))
    with torch.no_grad():
      ours = tlr.resample(torch_prior, torch.from_numpy(tables).long(), eta,
                          interior_only=interior_only).numpy()
    assert (walked != tables).sum() > 3, eta  # the walk changed codes: a real comparison
    np.testing.assert_array_equal(ours, walked, err_msg=f"eta {eta}")


def test_bilateral_twin_equals_vqjax():
  maps = np.random.default_rng(2).random((2, 20, 23)).astype(np.float32) * 255
  kw = dict(diameter=5, sigma_color=75.0, sigma_space=75.0)
  np.testing.assert_allclose(tlr.bilateral_filter(torch.from_numpy(maps), **kw).numpy(),
                             bilateral_filter(jnp.asarray(maps), **kw), rtol=0, atol=1e-3)


def test_resampling_maps_twin_equals_vqjax_predict(case):
  config, method, vq, prior, torch_prior, _ = case
  size = 32
  vqvae = torch_cases.base_model(config, vq, torch.device("cpu")).eval()
  images = np.random.default_rng(4).integers(0, 256, (2, size, size, 3), np.uint8)
  eta = 0.0078
  want = jax.jit(method.predict)({"vqvae": vq, "prior": prior, "eta": jnp.float32(eta)}, images)
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255.0
    got = tlr.anomaly_maps(vqvae, torch_prior, x, config.anomaly, eta)["resample"].numpy()
  assert (np.asarray(want["resampled_indices"]) != np.asarray(want["indices"])).any()
  np.testing.assert_allclose(got, want["maps"]["resample"], rtol=0, atol=2e-2)  # 0..255 units


def test_latent_resampling_deploy_rows_drive_the_walk_in_every_runtime(tmp_path):
  """Latent resampling's rows: the torch twin (three networks around a Python raster walk),
  its three ONNX graphs under ONNX Runtime (and OpenVINO) driven by the same walk, and the
  exported vqjax artifact give vqjax jit's map (0..255 units) within float32 rounding."""
  import importlib.util
  data, markdown, _ = run_smoke_benchmark(tmp_path, ("deploy_resample",), batches="1")
  rows = {r["variant"]: r for r in data["results"]}
  variants = ["vqjax_exported", "torch_eager_fp32", "onnxruntime_fp32"] + (
      ["openvino_fp32"] if importlib.util.find_spec("openvino") is not None else [])
  for variant in variants:
    assert rows[variant]["status"] == "ok", rows[variant].get("reason")
    assert rows[variant]["agreement"]["max_abs_diff_resample"] < 1e-3  # measured <= 4.6e-5
  assert data["settings"]["deploy_resample_onnx"]["onnx_files"] == ["encode", "finish", "prior"]
  assert rows["vqjax_fp32"]["ratios"]["best_other"] is not None
  assert "latent resampling's Eq. 6 map" in markdown and "eta" in data["settings"]["resample_model"]
