"""FAVAE: a VAE that also reconstructs frozen CNN features (Dehaene & Eline 2020).

Model: vqjax/models/favae.py (Appendix D). Loss (Eq. 8): per modelled space (the pixels, then
each feature space) the Gaussian negative log-likelihood with one learned variance per
channel, summed over channels, bilinearly upsampled to the image size and summed over spaces
and pixels; + KL(q(z|x) || N(0, I)). Anomaly map (§4, Fig. 2b): the same merged map, with z the
posterior mean (a decision: a deterministic map; the paper does not say whether it samples).

Which feature spaces (model.feature_extractor, the ablation of Fig. 3b):
  vgg16    ImageNet VGG16, frozen (M1). The paper models "the input of the 2nd, 3rd and 4th
           max pooling (right before activation)", Table 2's layers (7, 14, 21): in torchvision's
           `vgg16().features` indexing those are conv2_2, conv3_3 and conv4_3 before their ReLU
           (the pools are at 9, 16, 23 and take the ReLU outputs 8, 15, 22). Inputs are
           ImageNet-normalised, as the weights were trained (the third-party code feeds [0,1]).
  random   the same VGG16 with random weights, frozen (M2).
  encoder  the model's own encoder convs (3, 9, 15) (Table 2 "auto feature extractor"), before
           BatchNorm, gradient stopped (M3).
  none     pixels only: the "Vanilla VAE" (M4).
Table 2 lists decoder layers (22, 10, 16) beside (7, 14, 21), but in that order the sizes do
not match (decoder (10) is 16x16x512, VGG (14) 32x32x256); the printed adapters (128, 256,
512 channels in and out) pair them by channel count, which also matches the sizes:
(7) <- (22) at H/2, (14) <- (16) at H/4, (21) <- (10) at H/8. That pairing is used; the
encoder's (3, 9, 15) are half those sizes, so the adapter outputs are resized to them (§4).

Image score: the sum of the map (the paper); config.eval.image_score = 'mean' ranks the same.
"""
from __future__ import annotations

import dataclasses

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqjax.config_checks import get, one_of, positive_int, require
from vqjax.data.augment import augment_images, resolve_policy
from vqjax.inference import to_unit_range
from vqjax.models import COMPUTE_DTYPES
from vqjax.models.backbones import VGG16, imagenet_normalize
from vqjax.models.backbones import vgg16 as vgg16_layout
from vqjax.models.favae import DECODER_TAPS, DOWNSAMPLING, ENCODER_TAPS, FAVAE
from vqjax.ops.gaussian import gaussian_nll_map, kl_to_standard_normal, merge_maps, resize_features
from vqjax.ops.tiles import tile_images, untile_maps
from vqjax.train import FrozenVariables, batch_indices, train

FEATURE_EXTRACTORS = ("vgg16", "random", "encoder", "none")
VGG16_LAYERS = (7, 14, 21)  # torchvision vgg16().features indices (see the module docstring)
VGG16_CHANNELS = tuple(vgg16_layout.FEATURES[i][1] for i in VGG16_LAYERS)  # 128, 256, 512
# The map of the whole model, named by what it models (Fig. 3b's M1-M4).
MAIN_VARIANT = {"vgg16": "favae", "random": "favae_random_vgg16", "encoder": "favae_own_encoder",
                "none": "vanilla_vae"}
PIXEL_VARIANT = "pixel_only"  # the pixel term alone of a model with features


def _model_variables(variables):
  return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


@dataclasses.dataclass(frozen=True)
class FAVAEMethod:
  """The method surface (vqjax/methods/base.py) of FAVAE."""
  model: FAVAE
  feature_extractor: str
  backbone_weights: str
  learn_variance: bool
  input_size: int
  augment: ml_collections.FrozenConfigDict
  seed: int = 0
  variants: tuple[str, ...] = ("favae", PIXEL_VARIANT)
  crops_large_images = True  # data.texture_image_size: random crops to train, tiles to test

  @staticmethod
  def check_config(config) -> None:
    size = config.data.image_size
    require(size % DOWNSAMPLING == 0, "data.image_size",
            f"a multiple of {DOWNSAMPLING} (the encoder halves it four times)", size)
    one_of(config, "model.feature_extractor", FEATURE_EXTRACTORS)
    weights = get(config, "model.backbone_weights")
    require(isinstance(weights, str) and weights != "" and weights != "random",
            "model.backbone_weights",
            "'imagenet' or a torchvision vgg16 state-dict path (random weights: "
            "model.feature_extractor=random)", weights)
    for key in ("model.width", "model.bottleneck", "model.latent_dim"):
      positive_int(config, key)
    one_of(config, "model.dtype", tuple(COMPUTE_DTYPES))
    require(isinstance(get(config, "loss.learn_variance"), bool), "loss.learn_variance",
            "True or False", config.loss.learn_variance)

  @classmethod
  def from_config(cls, config, num_channels: int) -> "FAVAEMethod":
    m = config.model
    size = config.data.image_size
    extractor = m.feature_extractor
    if extractor in ("vgg16", "random"):
      feature_channels = VGG16_CHANNELS
    elif extractor == "encoder":  # the encoder's (3, 9, 15) have w, 2w, 4w channels
      feature_channels = (m.width, 2 * m.width, 4 * m.width)
    else:
      feature_channels = ()
    model = FAVAE(width=m.width, bottleneck=m.bottleneck, latent_dim=m.latent_dim,
                  bottom_size=size // DOWNSAMPLING, out_channels=num_channels,
                  feature_channels=feature_channels, dtype=COMPUTE_DTYPES[m.dtype])
    main = MAIN_VARIANT[extractor]
    variants = (main,) if extractor == "none" else (main, PIXEL_VARIANT)
    augment = {**config.augment.to_dict(),
               "policy": resolve_policy(config.augment.policy, config.data.category)}
    return cls(model=model, feature_extractor=extractor, backbone_weights=m.backbone_weights,
               learn_variance=config.loss.learn_variance, input_size=size,
               augment=ml_collections.FrozenConfigDict(augment), seed=config.seed,
               variants=variants)

  # --- feature spaces -------------------------------------------------------------------

  @property
  def backbone(self) -> VGG16:
    return VGG16(outputs=VGG16_LAYERS, dtype=self.model.dtype)

  def frozen_variables(self) -> FrozenVariables | None:
    """The frozen VGG16 (vgg16, random) with its source and checksum; None otherwise."""
    if self.feature_extractor not in ("vgg16", "random"):
      return None
    from vqjax.pretrained import frozen_backbone  # local: host-side file reading
    weights = "random" if self.feature_extractor == "random" else self.backbone_weights
    return frozen_backbone("vgg16", weights, seed=self.seed, config_key="model.backbone_weights")

  def targets(self, frozen, images, out) -> list:
    """The feature maps the model reconstructs, shallow to deep: [B,h_i,w_i,C_i] each."""
    if self.feature_extractor in ("vgg16", "random"):
      features = self.backbone.apply(frozen, imagenet_normalize(images))
      return [jax.lax.stop_gradient(features[i].astype(jnp.float32)) for i in VGG16_LAYERS]
    if self.feature_extractor == "encoder":
      return [jax.lax.stop_gradient(out["encoder_features"][t]) for t in ENCODER_TAPS]
    return []

  def space_maps(self, out, images, targets) -> list:
    """Negative log-likelihood maps summed over channels, one per space: pixels [B,H,W]
    first, then one [B,h_i,w_i] per feature space."""
    log_var = lambda v: v if self.learn_variance else jnp.zeros_like(v)
    maps = [gaussian_nll_map(images, out["pixels"], log_var(out["log_var_pixels"]))]
    for adapted, target, lv in zip(out["adapted"], targets, out["log_var_features"]):
      predicted = resize_features(adapted, *target.shape[1:3])
      maps.append(gaussian_nll_map(target, predicted, log_var(lv)))
    return maps

  # --- training -------------------------------------------------------------------------

  def init(self, rng, images):
    """Variables {'params', 'batch_stats'} for images [B,H,W,C] (any size: crops are taken)."""
    crop = jnp.zeros((1, self.input_size, self.input_size, images.shape[-1]), jnp.float32)
    return dict(self.model.init({"params": rng}, crop, rng, train=False))

  def _training_crops(self, images, rng):
    """[B,S,S,C] in [0,1] -> one random input_size crop per image (identity at S = size)."""
    if images.shape[1] == self.input_size:
      return images
    crop = (self.input_size, self.input_size, images.shape[-1])
    keys = jax.random.split(rng, images.shape[0])
    return jax.vmap(lambda image, key: pix.random_crop(key, image, crop))(images, keys)

  def loss(self, params, model_state, images, rng, frozen=None):
    """Eq. 8 for images [B,S,S,C] as stored -> (loss, (new_model_state, metrics))."""
    crop_rng, augment_rng, sample_rng = jax.random.split(rng, 3)
    images = self._training_crops(to_unit_range(images), crop_rng)
    a = self.augment
    images = augment_images(images, augment_rng, a.policy, max_degrees=a.max_rotation_degrees,
                            crop_fraction=a.crop_fraction, max_translation=a.max_translation)
    out, updates = self.model.apply(
        {"params": params, "batch_stats": model_state["batch_stats"]}, images, sample_rng,
        train=True, mutable=["batch_stats"])
    maps = self.space_maps(out, images, self.targets(frozen, images, out))
    height, width = images.shape[1:3]
    merged = merge_maps(maps, height, width)
    nll = jnp.mean(jnp.sum(merged, axis=(1, 2)))
    kl = jnp.mean(kl_to_standard_normal(out["mean"], out["log_var"]))
    loss = nll + kl
    metrics = dict(loss=loss, nll=nll, kl=kl,
                   pixel_nll=jnp.mean(jnp.sum(maps[0], axis=(1, 2))))
    return loss, ({"batch_stats": updates["batch_stats"]}, metrics)

  def initial_log_variances(self, frozen, images: np.ndarray) -> dict:
    """Data-dependent start of the learned variances: per channel and space, the log-variance
    of the targets over `images` [B,S,S,C] (tiles of the first training batch). From 0, Adam
    (about learning_rate per step) would need thousands of steps to reach their scales: on the
    demo data pixels ~1e-2, VGG16 features ~2-500 (per-channel medians 11, 58, 28)."""
    if not self.learn_variance:
      return {}

    def log_variances(images):
      tiles = to_unit_range(tile_images(images, self.input_size))
      variables = self.init(jax.random.key(0), tiles)
      out = self.model.apply(variables, tiles, train=False)
      spaces = [tiles] + self.targets(frozen, tiles, out)
      return [jnp.log(jnp.var(s, axis=(0, 1, 2)) + 1e-6) for s in spaces]

    values = jax.device_get(jax.jit(log_variances)(jnp.asarray(images)))
    names = ["log_var_pixels"] + [f"log_var_features_{i}" for i in range(len(values) - 1)]
    return dict(zip(names, values))

  def fit(self, config, dataset, workdir, *, log, show_progress=True):
    """Trains on dataset.train; returns (variables with the frozen VGG16 under 'frozen',
    summary)."""
    frozen = self.frozen_variables()
    images = dataset.train.images
    first = images[batch_indices(0, config.train.batch_size, len(images), config.seed)]
    overrides = self.initial_log_variances(None if frozen is None else frozen.variables, first)
    return train(config, self, images, workdir, log=log, show_progress=show_progress,
                 frozen=frozen, param_overrides=overrides)

  # --- inference ------------------------------------------------------------------------

  def predict(self, variables, images):
    """images [B,S,S,C] (S a multiple of input_size: tiled) -> dict(reconstructions
    [B,S,S,C], maps {variant: [B,S,S]}); every output is per image (leading axis B)."""
    images = to_unit_range(images)
    batch, size = images.shape[0], images.shape[1]
    tiles = tile_images(images, self.input_size)
    out = self.model.apply(_model_variables(variables), tiles, train=False)
    maps = self.space_maps(out, tiles, self.targets(variables.get("frozen"), tiles, out))
    merged = merge_maps(maps, self.input_size, self.input_size)
    per_variant = {self.variants[0]: merged, PIXEL_VARIANT: maps[0]}
    grid = size // self.input_size
    return dict(
        reconstructions=untile_maps(out["pixels"], batch, grid),
        maps={v: untile_maps(per_variant[v], batch, grid) for v in self.variants})

  def run_info(self, variables, dataset, summary, *, batch_size, mesh) -> dict:
    """The feature spaces, their layer mapping and the learned standard deviations."""
    params = variables["params"]
    std = lambda name: float(np.mean(np.exp(0.5 * np.asarray(params[name]))))
    spaces = {"pixels": std("log_var_pixels") if self.learn_variance else 1.0}
    layers = {"vgg16": VGG16_LAYERS, "random": VGG16_LAYERS, "encoder": ENCODER_TAPS}.get(
        self.feature_extractor, ())
    for i, layer in enumerate(layers):
      spaces[f"{self.feature_extractor}_{layer}"] = (
          std(f"log_var_features_{i}") if self.learn_variance else 1.0)
    return {"favae": {"feature_extractor": self.feature_extractor,
                      "feature_layers": list(layers),
                      "decoder_taps": list(DECODER_TAPS[:len(layers)]),
                      "learn_variance": self.learn_variance,
                      "mean_learned_std": spaces,
                      "input_size": self.input_size}}
