"""Batched prediction over a split and the map -> image-score reduction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import mvtec_vq
from vqjax import evaluate, inference, metrics, sharding
from vqjax.methods import get_method


@pytest.fixture(scope="module")
def smoke_model():
  config = mvtec_vq.get_config("smoke")
  method = get_method(config, 3)
  images = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
  variables = method.init(jax.random.key(0), jnp.asarray(images[:1]))
  return method, variables, images


@pytest.mark.parametrize("num_images,batch_size", [(11, 4), (3, 4), (8, 4), (1, 1)])
def test_predict_split_equals_predict_image_by_image(smoke_model, num_images, batch_size):
  # The last batch is padded to batch_size: only its first (real) rows may come back, in order.
  method, variables, images = smoke_model
  images = images[:num_images]
  mesh = sharding.make_data_mesh()
  out = inference.predict_split(inference.make_predict_fn(method.predict, mesh), variables,
                                images, batch_size, mesh)
  one = jax.jit(method.predict)
  assert out["maps"]["ssim_am"].shape == (num_images, 32, 32)
  for i, image in enumerate(images):
    expected = one(variables, image[None])
    np.testing.assert_array_equal(out["indices"][i], np.asarray(expected["indices"][0]))
    np.testing.assert_allclose(out["reconstructions"][i], np.asarray(expected["reconstructions"][0]),
                               atol=1e-6)
    for variant in ("ssim", "ssim_am"):
      np.testing.assert_allclose(out["maps"][variant][i],
                                 np.asarray(expected["maps"][variant][0]), atol=1e-6)


def test_image_score_reductions():
  # Image 0 has the higher mean, image 1 the higher max: the two reductions rank them oppositely.
  maps = np.zeros((2, 4, 4), np.float32)
  maps[0] = 0.5
  maps[1, 0, 0] = 0.9
  np.testing.assert_allclose(metrics.image_scores(maps, "mean"), [0.5, 0.9 / 16], rtol=1e-7)
  np.testing.assert_allclose(metrics.image_scores(maps, "max"), [0.5, 0.9], rtol=1e-7)
  assert metrics.image_scores(maps, "mean").dtype == np.float64
  with pytest.raises(ValueError, match="eval.image_score"):
    metrics.image_scores(maps, "median")


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_score_maps_uses_the_configured_image_score(reduction):
  import ml_collections
  from vqjax.data.dataset import Split
  rng = np.random.default_rng(1)
  maps = rng.random((12, 8, 8)).astype(np.float32)
  labels = np.array([0, 1] * 6)
  split = Split(images=np.zeros((12, 8, 8, 1), np.uint8), labels=labels,
                masks=np.zeros((12, 8, 8), bool), names=tuple(str(i) for i in range(12)),
                has_mask=np.zeros(12, bool))
  eval_config = ml_collections.ConfigDict({"image_score": reduction, "pro_fpr_limit": 0.3})
  result = evaluate.score_maps({"m": maps}, split, eval_config)["m"]
  reduce = {"mean": np.mean, "max": np.max}[reduction]
  expected = roc_auc_score(labels, reduce(maps.reshape(12, -1), axis=1))
  assert result["image_auroc"] == pytest.approx(expected, abs=1e-12)
  other = roc_auc_score(labels, {"mean": np.max, "max": np.mean}[reduction](
      maps.reshape(12, -1), axis=1))
  assert other != pytest.approx(expected, abs=1e-3)  # the data tells the reductions apart
  assert result["pixel_auroc"] is None


def test_score_maps_uses_a_methods_own_image_scores_where_given():
  # IGD-style: the image score is its own function of the image, not a reduction of the map.
  import ml_collections
  from vqjax.data.dataset import Split
  maps = np.random.default_rng(2).random((8, 4, 4)).astype(np.float32)
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  own = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])  # separates perfectly
  split = Split(images=np.zeros((8, 4, 4, 1), np.uint8), labels=labels,
                masks=np.zeros((8, 4, 4), bool), names=tuple(map(str, range(8))),
                has_mask=np.zeros(8, bool))
  eval_config = ml_collections.ConfigDict({"image_score": "max", "pro_fpr_limit": 0.3})
  out = evaluate.score_maps({"a": maps, "b": maps}, split, eval_config, scores={"a": own})
  assert out["a"]["image_auroc"] == 1.0
  assert out["b"]["image_auroc"] == pytest.approx(roc_auc_score(labels, maps.reshape(8, -1).max(1)))
