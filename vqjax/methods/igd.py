"""IGD: interpolated Gaussian descriptor (Chen et al. 2022).

Per scale (the global model on whole images; with model.local, also the local model on 32 px
patches unfolded every 16 px) an autoencoder f/g, an ACAI critic d and a Gaussian SVDD centre:
  critic loss  (Eq. 5)  |d(x_alpha) - alpha|^2 + |d(gamma x + (1 - gamma) x_hat)|^2, gamma 0.2;
  AE loss  (Eq. 6, 7)   l_m(x, x_hat) + lambda |d(x_alpha)|^2 + (1 - h(f(x))), lambda 0.1;
  x_alpha = g(alpha f(x) + (1 - alpha) f(x reversed in the batch)), alpha ~ U[0, 0.5] (Eq. 2);
  l_m (Eq. 8)  rho MAE / L + (1 - rho)(1 - MS-SSIM), rho 0.15, the global model's MS-SSIM with
               5 scales, the local model's with 4 (vqjax/ops/ms_ssim.py); L = 4.7579;
  h(z) = exp(-|z - mu|^2 / sigma^2) (Eq. 7); the E-step sets mu = mean code and sigma^2 =
  kappa x mean squared distance (floored at 1) over the training set before training and
  every gsvdd.em_every_epochs (a trainer hook, so its values are in every checkpoint).
Two optimizers per step (autoencoder; critic), both from config.train, updated from the same
forward pass. Knowledge distillation (Eq. 10, model.kd_teacher != 'none'): before that, each
scale's encoder is trained to regress a frozen ImageNet network's 512-d feature (config.kd_train),
then frozen; only its to_latent layer, the decoder and the critic train afterwards.

Scores (the two scales mixed by beta, the paper's convex combination of global and local):
  l_m(x) = beta l_m,G + (1 - beta) l_m,L     l_h(x) = beta (1 - h_G) + (1 - beta) (1 - h_L)
  image score  s = xi l_m + (1 - xi) l_h  (Eq. 11, xi 0.5); l_m,L and 1 - h_L are the means over
  the image's patches. Pixel map (Eq. 12): the same sum taken at a pixel: MAE and MS-SSIM maps
  (ms_ssim_map), the local patches' maps and (1 - h) values stitched back by coverage average.
Variants: 'igd' (Eq. 11/12) and 'igd_reconstruction' (l_m alone).
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vqjax.config_checks import get, one_of, positive_int, require
from vqjax import inference, sharding
from vqjax.inference import to_unit_range
from vqjax.models import COMPUTE_DTYPES
from vqjax.models.backbones import IMAGENET_MEAN, IMAGENET_STD, VGG16, ResNet18, imagenet_normalize
from vqjax.models.igd import IGDAutoencoder, IGDCritic
from vqjax.ops.ms_ssim import (GLOBAL_WEIGHTS, LOCAL_WEIGHTS, minimum_size, ms_ssim, ms_ssim_map,
                               normalized_range)
from vqjax.ops.tiles import overlapping_patches, patch_starts, stitch_patch_maps
from vqjax.optimizers import make_optimizer
from vqjax.train import (FrozenVariables, PeriodicHook, TrainProgram, resolve_num_steps,
                         run_training, steps_per_epoch)

KD_TEACHERS = ("vgg16", "resnet18", "none")
VGG16_KD_LAYER = 29  # relu5_3 in torchvision's vgg16().features; global-average-pooled: 512-d
MAIN_VARIANT, RECONSTRUCTION_VARIANT = "igd", "igd_reconstruction"
DATA_RANGE = normalized_range()  # 4.7579
BATCH_FOR_STATISTICS = 64  # images per jitted call of the E-step


@flax.struct.dataclass
class IGDState:
  step: jnp.ndarray
  params: dict        # {scale: {'autoencoder': ..., 'critic': ...}}
  model_state: dict   # {scale: {'batch_stats': ...}}
  opt_state: optax.OptState
  gsvdd: dict         # {scale: {'center': [d_z], 'sigma2': []}}


def _scale_names(local: bool) -> tuple[str, ...]:
  return ("global", "local") if local else ("global",)


def _kd_teacher_module(teacher: str):
  if teacher == "vgg16":
    return VGG16(outputs=(VGG16_KD_LAYER,))
  return ResNet18(outputs=("avgpool",))


@dataclasses.dataclass(frozen=True)
class IGDMethod:
  """The method surface (vqjax/methods/base.py) of IGD."""
  autoencoders: tuple  # IGDAutoencoder per scale ('global'[, 'local'])
  critics: tuple
  image_size: int
  local_size: int
  local_stride: int
  num_channels: int
  loss: ml_collections.FrozenConfigDict
  gsvdd: ml_collections.FrozenConfigDict
  xi: float
  kd_teacher: str
  kd_weights: str
  seed: int = 0
  variants: tuple[str, ...] = (MAIN_VARIANT, RECONSTRUCTION_VARIANT)

  # --- config -----------------------------------------------------------------------------

  @staticmethod
  def check_config(config) -> None:
    m, loss = config.model, config.loss
    size = config.data.image_size
    for key in ("model.latent_dim", "model.feature_dim", "model.local_size", "model.local_stride"):
      positive_int(config, key)
    widths = ["model.global_encoder_widths", "model.global_decoder_widths",
              "model.global_critic_widths"]
    if m.local:
      widths += ["model.local_encoder_widths", "model.local_decoder_widths",
                 "model.local_critic_widths"]
    for key in widths:
      value = get(config, key)
      require(isinstance(value, (tuple, list)) and len(value) > 0
              and all(isinstance(w, int) and w > 0 for w in value), key,
              "a non-empty tuple of positive integers (block widths)", value)
    for scale in _scale_names(m.local):
      n = len(get(config, f"model.{scale}_encoder_widths"))
      side = size if scale == "global" else m.local_size
      require(side % 2 ** n == 0, f"model.{scale}_encoder_widths",
              f"at most as many blocks as {side} px can be halved", n)
      require(side % 2 ** len(get(config, f"model.{scale}_decoder_widths")) == 0,
              f"model.{scale}_decoder_widths",
              f"at most as many blocks as {side} px can be halved", side)
      weights = GLOBAL_WEIGHTS if scale == "global" else LOCAL_WEIGHTS
      window = get(config, f"loss.{scale}_window")
      require(isinstance(window, int) and window >= 1 and window % 2 == 1,
              f"loss.{scale}_window", "an odd window size >= 1", window)
      need = minimum_size(len(weights), window)
      require(side >= need, f"loss.{scale}_window",
              f"a window that fits {len(weights)} MS-SSIM scales of {side} px images "
              f"(a {window}-px window needs >= {need} px)", window)
    require(isinstance(m.local, bool), "model.local", "True or False", m.local)
    if m.local:
      require(m.local_size <= size and (size - m.local_size) % m.local_stride == 0,
              "model.local_stride",
              f"a stride that tiles data.image_size={size} with {m.local_size} px patches", m.local_stride)
    one_of(config, "model.dtype", tuple(COMPUTE_DTYPES))
    one_of(config, "model.kd_teacher", KD_TEACHERS)
    for key in ("loss.rho", "loss.beta", "loss.critic_gamma", "anomaly.xi", "gsvdd.kappa"):
      value = get(config, key)
      require(isinstance(value, (int, float)) and 0 <= value <= 1, key, "a number in [0, 1]", value)
    for key in ("loss.critic_weight", "gsvdd.sigma2_floor", "gsvdd.em_every_epochs"):
      value = get(config, key)
      require(isinstance(value, (int, float)) and value > 0, key, "a number > 0", value)
    for key in ("loss.interpolate", "loss.gsvdd"):
      require(isinstance(get(config, key), bool), key, "True or False", get(config, key))
    if m.kd_teacher != "none":
      from vqjax.config_checks import check_train_block  # local: avoids an import cycle
      check_train_block(config, "kd_train")
      require(m.feature_dim == 512, "model.feature_dim",
              "512 with a teacher (its feature is 512-d; model.kd_teacher=none frees it)",
              m.feature_dim)
      weights = get(config, "model.kd_weights")
      require(isinstance(weights, str) and weights != "", "model.kd_weights",
              "'imagenet' (vgg16), 'random' or a torchvision state-dict path", weights)

  @classmethod
  def from_config(cls, config, num_channels: int) -> "IGDMethod":
    m = config.model
    dtype = COMPUTE_DTYPES[m.dtype]
    autoencoders, critics = [], []
    for scale in _scale_names(m.local):
      side = config.data.image_size if scale == "global" else m.local_size
      autoencoders.append(IGDAutoencoder(
          encoder_widths=tuple(m[f"{scale}_encoder_widths"]),
          decoder_widths=tuple(m[f"{scale}_decoder_widths"]), image_size=side,
          latent_dim=m.latent_dim, feature_dim=m.feature_dim, out_channels=3, dtype=dtype))
      critics.append(IGDCritic(tuple(m[f"{scale}_critic_widths"]), dtype=dtype))
    return cls(autoencoders=tuple(autoencoders), critics=tuple(critics),
               image_size=config.data.image_size, local_size=m.local_size,
               local_stride=m.local_stride, num_channels=num_channels,
               loss=ml_collections.FrozenConfigDict(config.loss),
               gsvdd=ml_collections.FrozenConfigDict(config.gsvdd), xi=float(config.anomaly.xi),
               kd_teacher=m.kd_teacher, kd_weights=m.kd_weights, seed=config.seed)

  @property
  def scales(self) -> tuple[str, ...]:
    return _scale_names(len(self.autoencoders) == 2)

  # --- inputs ---------------------------------------------------------------------------

  def scale_inputs(self, images) -> dict:
    """images [B,S,S,C] as stored -> {scale: ImageNet-normalised [N,s,s,3]} (grey read as RGB;
    the local scale holds the B*P patches in raster order)."""
    x = imagenet_normalize(to_unit_range(images))
    if x.shape[-1] != 3:
      x = jnp.broadcast_to(x, (*x.shape[:3], 3))
    inputs = {"global": x}
    if "local" in self.scales:
      inputs["local"] = overlapping_patches(x, self.local_size, self.local_stride)
    return inputs

  def _ms_ssim_kwargs(self, scale: str) -> dict:
    return dict(weights=GLOBAL_WEIGHTS if scale == "global" else LOCAL_WEIGHTS,
                window_size=self.loss[f"{scale}_window"], data_range=DATA_RANGE)

  # --- training -------------------------------------------------------------------------

  def init_variables(self, rng) -> tuple[dict, dict]:
    """(params {scale: {'autoencoder', 'critic'}}, model_state {scale: {'batch_stats'}})."""
    params, model_state = {}, {}
    for k, (scale, ae, critic) in enumerate(zip(self.scales, self.autoencoders, self.critics)):
      side = self.image_size if scale == "global" else self.local_size
      x = jnp.zeros((1, side, side, 3), jnp.float32)
      ae_key, critic_key = jax.random.split(jax.random.fold_in(rng, k))
      ae_vars = ae.init(ae_key, x)
      params[scale] = {"autoencoder": ae_vars["params"],
                       "critic": critic.init(critic_key, x)["params"]}
      model_state[scale] = {"batch_stats": ae_vars["batch_stats"]}
    return params, model_state

  def _initial_gsvdd(self) -> dict:
    d_z = self.autoencoders[0].latent_dim
    return {s: {"center": jnp.zeros((d_z,), jnp.float32), "sigma2": jnp.ones((), jnp.float32)}
            for s in self.scales}

  def _optimizer(self, train_config, num_steps: int, distilled: bool):
    """Two optimizers, one per loss: the autoencoders' and the critics'. A distilled encoder
    gets no updates (its to_latent layer does)."""
    def labels(params):
      out = {}
      for scale, p in params.items():
        ae = {name: jax.tree.map(lambda _: "autoencoder", sub) for name, sub in p["autoencoder"].items()}
        if distilled:
          ae["encoder"] = jax.tree.map(lambda _: "frozen", p["autoencoder"]["encoder"])
        out[scale] = {"autoencoder": ae,
                      "critic": jax.tree.map(lambda _: "critic", p["critic"])}
      return out
    return optax.multi_transform(
        {"autoencoder": make_optimizer(train_config, num_steps),
         "critic": make_optimizer(train_config, num_steps), "frozen": optax.set_to_zero()},
        labels)

  def _gsvdd_distance(self, z, gsvdd):
    return jnp.sum((z - gsvdd["center"]) ** 2, axis=-1) / gsvdd["sigma2"]

  def scale_loss(self, scale, params, batch_stats, gsvdd, x, rng, distilled: bool):
    """Eq. 5-8 for one scale on normalised inputs x [N,s,s,3] -> (AE loss + critic loss,
    (batch_stats, metrics)). The critic's loss reaches the autoencoder only through stopped
    gradients, and the AE's critic term reaches the critic's parameters not at all."""
    k = self.scales.index(scale)
    ae, critic = self.autoencoders[k], self.critics[k]
    loss = self.loss
    variables = {"params": params["autoencoder"], "batch_stats": batch_stats}
    (z, x_hat), updates = ae.apply(variables, x, train=True, train_encoder=not distilled,
                                   mutable=["batch_stats"])
    mae = jnp.mean(jnp.abs(x - x_hat)) / DATA_RANGE
    similarity = jnp.mean(ms_ssim(x, x_hat, **self._ms_ssim_kwargs(scale)))
    reconstruction = loss.rho * mae + (1 - loss.rho) * (1 - similarity)
    ae_loss, critic_loss = reconstruction, 0.0
    metrics = {f"{scale}_ms_ssim": similarity, f"{scale}_mae": mae}
    if loss.gsvdd:
      gsvdd_loss = jnp.mean(1 - jnp.exp(-self._gsvdd_distance(z, gsvdd)))
      ae_loss = ae_loss + gsvdd_loss
      metrics[f"{scale}_gsvdd"] = gsvdd_loss
    if loss.interpolate:
      alpha = jax.random.uniform(rng, (x.shape[0], 1), maxval=0.5)
      mixed = alpha * z + (1 - alpha) * z[::-1]
      x_alpha, updates = ae.apply({"params": params["autoencoder"], **updates}, mixed, train=True,
                                  method=IGDAutoencoder.decode, mutable=["batch_stats"])
      frozen_critic = jax.lax.stop_gradient(params["critic"])
      ae_critic = jnp.mean(critic.apply({"params": frozen_critic}, x_alpha) ** 2)
      ae_loss = ae_loss + loss.critic_weight * ae_critic
      g = loss.critic_gamma
      blend = g * x + (1 - g) * jax.lax.stop_gradient(x_hat)
      critic_loss = (
          jnp.mean((critic.apply({"params": params["critic"]}, jax.lax.stop_gradient(x_alpha))
                    - alpha[:, 0]) ** 2)
          + jnp.mean(critic.apply({"params": params["critic"]}, blend) ** 2))
      metrics[f"{scale}_critic"] = critic_loss
    metrics[f"{scale}_loss"] = ae_loss
    return ae_loss + critic_loss, (updates["batch_stats"], metrics)

  def train_step(self, optimizer, distilled: bool, state: IGDState, batch, root_key, frozen=None):
    rng = jax.random.fold_in(root_key, state.step)
    inputs = self.scale_inputs(batch)

    def total_loss(params):
      total, new_stats, metrics = 0.0, {}, {}
      for k, scale in enumerate(self.scales):
        value, (stats, m) = self.scale_loss(
            scale, params[scale], state.model_state[scale]["batch_stats"], state.gsvdd[scale],
            inputs[scale], jax.random.fold_in(rng, k), distilled)
        total, new_stats[scale] = total + value, {"batch_stats": stats}
        metrics.update(m)
      return total, (new_stats, metrics)

    (loss, (model_state, metrics)), grads = jax.value_and_grad(total_loss, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, model_state=model_state,
                         opt_state=opt_state), metrics

  # --- E-step ---------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnums=0)
  def _codes(self, params, model_state, images):
    """{scale: codes [N_s, d_z]} of images [B,S,S,C] as stored, in inference mode."""
    inputs = self.scale_inputs(images)
    out = {}
    for k, scale in enumerate(self.scales):
      variables = {"params": params[scale]["autoencoder"], **model_state[scale]}
      out[scale] = self.autoencoders[k].apply(variables, inputs[scale],
                                              method=IGDAutoencoder.encode)
    return out

  @functools.lru_cache(maxsize=4)  # one compilation per mesh, not per E-step
  def _codes_fn(self, mesh):
    def codes_per_image(variables, images):
      out = self._codes(variables["params"], variables["model_state"], images)
      return {s: c.reshape(images.shape[0], -1, c.shape[-1]) for s, c in out.items()}
    return inference.make_predict_fn(codes_per_image, mesh)

  def estimate_gsvdd(self, params, model_state, images) -> dict:
    """E-step over the training images: mu = mean code; sigma^2 = max(kappa x mean squared
    distance, floor), per scale (local: over all patches). float64 accumulation on the host.
    Batched over every device of the run (each process reads its rows of each batch)."""
    mesh = sharding.make_data_mesh()
    batch_size = -(-BATCH_FOR_STATISTICS // mesh.size) * mesh.size
    out = inference.predict_split(self._codes_fn(mesh), {"params": params,
                                                         "model_state": model_state},
                                  images, batch_size, mesh)
    codes = {s: [np.asarray(out[s], np.float64).reshape(-1, out[s].shape[-1])]
             for s in self.scales}
    result = {}
    for s in self.scales:
      z = np.concatenate(codes[s])
      center = z.mean(axis=0)
      spread = np.mean(np.sum((z - center) ** 2, axis=1))
      sigma2 = max(self.gsvdd.kappa * spread, self.gsvdd.sigma2_floor)
      result[s] = {"center": jnp.asarray(center, jnp.float32),
                   "sigma2": jnp.asarray(sigma2, jnp.float32)}
    return result

  def _em_hook(self, every: int) -> PeriodicHook:
    def e_step(state, frozen, data):
      gsvdd = self.estimate_gsvdd(state.params, state.model_state, data)
      return state.replace(gsvdd=sharding.put_replicated(gsvdd, sharding.make_data_mesh()))
    return PeriodicHook(every=every, fn=e_step, name="gsvdd_e_step", at_start=True)

  # --- knowledge distillation -------------------------------------------------------------

  def teacher_variables(self) -> FrozenVariables:
    from vqjax.pretrained import frozen_backbone  # local: host-side file reading
    return frozen_backbone(self.kd_teacher, self.kd_weights, seed=self.seed,
                           config_key="model.kd_weights")

  def teacher_features(self, teacher, x):
    """Normalised inputs [N,s,s,3] -> the frozen network's 512-d feature [N,512]."""
    out = _kd_teacher_module(self.kd_teacher).apply(teacher, x)
    feature = out[VGG16_KD_LAYER] if self.kd_teacher == "vgg16" else out["avgpool"]
    return jax.lax.stop_gradient(jnp.mean(feature.astype(jnp.float32), axis=(1, 2)))

  @functools.partial(jax.jit, static_argnums=0)
  def _teacher_targets(self, teacher, images):
    inputs = self.scale_inputs(images)
    return {s: self.teacher_features(teacher, inputs[s]).reshape(images.shape[0], -1, 512)
            for s in self.scales}

  def kd_targets(self, teacher, images: np.ndarray) -> dict:
    """{scale: the teacher's features [N, P_s, 512]} of the training images (P_s: 1 global,
    the patches local), computed once: the teacher is frozen and the images fixed."""
    chunks = [jax.device_get(self._teacher_targets(teacher, jnp.asarray(
        images[i:i + BATCH_FOR_STATISTICS]))) for i in range(0, len(images), BATCH_FOR_STATISTICS)]
    return {s: np.concatenate([c[s] for c in chunks]) for s in self.scales}

  def kd_program(self, kd_config, num_steps: int, teacher: FrozenVariables,
                 images: np.ndarray) -> TrainProgram:
    """Eq. 10 for every scale's encoder: |teacher(x) - f(x)|^2 summed over the 512 features.
    The program trains on image indices [N,1]: the images and their precomputed teacher
    features ride along as frozen inputs (never checkpointed; the teacher's checksum is)."""
    optimizer = make_optimizer(kd_config, num_steps)
    # The images ride along whole: every training image is decoded here (on every process).
    frozen = FrozenVariables({"images": jnp.asarray(np.asarray(images)),
                              "targets": jax.tree.map(jnp.asarray,
                                                      self.kd_targets(teacher.variables, images))},
                             teacher.info)

    def init(rng, _):
      params, model_state = self.init_variables(rng)
      encoders = {s: params[s]["autoencoder"]["encoder"] for s in self.scales}
      stats = {s: model_state[s]["batch_stats"]["encoder"] for s in self.scales}
      return IGDState(step=jnp.zeros((), jnp.int32), params=encoders,
                      model_state=stats, opt_state=optimizer.init(encoders), gsvdd={})

    def step(state, batch, root_key, data):
      index = batch[:, 0]
      inputs = self.scale_inputs(data["images"][index])

      def loss_fn(params):
        total, stats, metrics = 0.0, {}, {}
        for k, scale in enumerate(self.scales):
          variables = {"params": {"encoder": params[scale]},
                       "batch_stats": {"encoder": state.model_state[scale]}}
          student, updates = self.autoencoders[k].apply(
              variables, inputs[scale], train=True, method=IGDAutoencoder.feature,
              mutable=["batch_stats"])
          target = data["targets"][scale][index].reshape(student.shape)
          value = jnp.mean(jnp.sum((student - target) ** 2, axis=-1))
          total = total + value
          stats[scale] = updates["batch_stats"]["encoder"]
          metrics[f"{scale}_kd"] = value
        return total, (stats, metrics)

      (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           model_state=stats, opt_state=opt_state), dict(metrics, loss=loss)

    return TrainProgram(init=init, step=step,
                        variables=lambda state, _: {"params": state.params,
                                                    "batch_stats": state.model_state},
                        frozen=frozen)

  # --- the main stage -----------------------------------------------------------------------

  def main_program(self, train_config, num_steps: int, em_every: int,
                   distilled: dict | None) -> TrainProgram:
    optimizer = self._optimizer(train_config, num_steps, distilled is not None)

    def init(rng, _):
      params, model_state = self.init_variables(rng)
      if distilled is not None:
        for s in self.scales:
          params[s]["autoencoder"]["encoder"] = distilled["params"][s]
          model_state[s]["batch_stats"]["encoder"] = distilled["batch_stats"][s]
      return IGDState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=optimizer.init(params), gsvdd=self._initial_gsvdd())

    hooks = (self._em_hook(em_every),) if self.loss.gsvdd else ()
    return TrainProgram(
        init=init, step=functools.partial(self.train_step, optimizer, distilled is not None),
        variables=lambda state, _: {"params": state.params, "model_state": state.model_state,
                                    "gsvdd": state.gsvdd},
        hooks=hooks, progress=tuple((f"{s}_ms_ssim", f"ms-ssim {s}") for s in self.scales))

  def fit(self, config, dataset, workdir, *, log, show_progress=True):
    """Stage 1 (with a teacher): distillation; stage 2: IGD. Each resumes on its own."""
    workdir = pathlib.Path(workdir)
    images = dataset.train.images
    summary = {"steps": 0, "compile_seconds": 0.0, "train_seconds": 0.0}
    distilled = None
    if self.kd_teacher != "none":
      teacher = self.teacher_variables()
      kd_config = ml_collections.ConfigDict({"train": config.kd_train.to_dict(),
                                             "seed": config.seed, "train_block": "kd_train"})
      kd_steps = resolve_num_steps(config.kd_train, len(images))
      log(f"stage 1/2: distilling {self.kd_teacher} ({teacher.info.get('source')}) into the "
          f"encoder{'s' if len(self.scales) > 1 else ''}, {kd_steps} steps")
      program = self.kd_program(config.kd_train, kd_steps, teacher, images)
      indices = np.arange(len(images), dtype=np.int32)[:, None]
      distilled, kd_summary = run_training(program, kd_config, indices, workdir / "kd", log=log,
                                           show_progress=show_progress)
      summary.update(kd_steps=kd_summary["steps"],
                     compile_seconds=kd_summary["compile_seconds"],
                     train_seconds=kd_summary["train_seconds"],
                     kd_teacher=teacher.info)
      log("stage 2/2: IGD")
    num_steps = resolve_num_steps(config.train, len(images))
    em_every = max(1, round(self.gsvdd.em_every_epochs * steps_per_epoch(config.train,
                                                                          len(images))))
    program = self.main_program(config.train, num_steps, em_every, distilled)
    variables, main_summary = run_training(program, config, images, workdir / "igd", log=log,
                                           show_progress=show_progress)
    summary["steps"] = main_summary["steps"]
    summary["compile_seconds"] += main_summary["compile_seconds"]
    summary["train_seconds"] += main_summary["train_seconds"]
    summary["em_every_steps"] = em_every
    return variables, summary

  # --- inference ------------------------------------------------------------------------

  def _scale_outputs(self, variables, scale, x):
    """Per input [N,s,s,3]: reconstruction, l_m map [N,s,s], l_m [N], 1 - h [N]."""
    k = self.scales.index(scale)
    ae_vars = {"params": variables["params"][scale]["autoencoder"],
               **variables["model_state"][scale]}
    z, x_hat = self.autoencoders[k].apply(ae_vars, x)
    kwargs = self._ms_ssim_kwargs(scale)
    rho = self.loss.rho
    abs_error = jnp.abs(x - x_hat) / DATA_RANGE
    lm_map = rho * jnp.mean(abs_error, axis=-1) + (1 - rho) * (1 - ms_ssim_map(x, x_hat, **kwargs))
    lm = rho * jnp.mean(abs_error, axis=(1, 2, 3)) + (1 - rho) * (1 - ms_ssim(x, x_hat, **kwargs))
    lh = 1 - jnp.exp(-self._gsvdd_distance(z, variables["gsvdd"][scale]))
    return x_hat, lm_map, lm, lh

  def predict(self, variables, images):
    """images [B,S,S,C] -> dict(maps, scores {variant: [B]}, reconstructions [B,S,S,C])."""
    inputs = self.scale_inputs(images)
    batch = inputs["global"].shape[0]
    x_hat, lm_map, lm, lh = self._scale_outputs(variables, "global", inputs["global"])
    lh_map = jnp.broadcast_to(lh[:, None, None], lm_map.shape)
    if "local" in self.scales:
      beta = self.loss.beta
      _, lm_map_l, lm_l, lh_l = self._scale_outputs(variables, "local", inputs["local"])
      stitch = lambda m: stitch_patch_maps(m, batch, self.image_size, self.local_stride)
      per_image = lambda v: jnp.mean(v.reshape(batch, -1), axis=1)
      patch_lh = jnp.broadcast_to(lh_l[:, None, None], lm_map_l.shape)
      lm_map = beta * lm_map + (1 - beta) * stitch(lm_map_l)
      lh_map = beta * lh_map + (1 - beta) * stitch(patch_lh)
      lm = beta * lm + (1 - beta) * per_image(lm_l)
      lh = beta * lh + (1 - beta) * per_image(lh_l)
    xi = self.xi if self.loss.gsvdd else 1.0
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    reconstruction = jnp.clip(x_hat * std + mean, 0.0, 1.0)
    if self.num_channels == 1:
      reconstruction = jnp.mean(reconstruction, axis=-1, keepdims=True)
    return dict(
        reconstructions=reconstruction,
        maps={MAIN_VARIANT: xi * lm_map + (1 - xi) * lh_map, RECONSTRUCTION_VARIANT: lm_map},
        scores={MAIN_VARIANT: xi * lm + (1 - xi) * lh, RECONSTRUCTION_VARIANT: lm})

  def run_info(self, variables, dataset, summary, *, batch_size, mesh) -> dict:
    gsvdd = jax.device_get(variables["gsvdd"])
    return {"igd": {
        "scales": list(self.scales),
        "local_patches_per_image": (len(patch_starts(self.image_size, self.local_size,
                                                     self.local_stride)) ** 2
                                    if "local" in self.scales else 0),
        "kd_teacher": self.kd_teacher if self.kd_teacher == "none" else summary.get(
            "kd_teacher", self.kd_teacher),
        "gsvdd": {s: {"sigma2": float(gsvdd[s]["sigma2"]),
                      "center_norm": float(np.linalg.norm(gsvdd[s]["center"]))}
                  for s in self.scales} if self.loss.gsvdd else None,
        "em_every_steps": summary.get("em_every_steps"),
        "xi": self.xi, "beta": self.loss.beta, "rho": self.loss.rho,
        "interpolate": self.loss.interpolate}}
