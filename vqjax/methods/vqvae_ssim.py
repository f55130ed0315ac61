"""VQ-VAE SSIM and SSIM+AM (Gangloff et al. 2022).

Loss (Eq. 4): -log p(x | z_q) under a continuous-Bernoulli decoder (mean over pixels)
+ ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2 (means over latent elements).
Anomaly maps: `ssim` = 1 - SSIM(x, x_hat) with x_hat the continuous-Bernoulli mean (a
decision: the mean, not lam, is what an image-space reconstruction is); `ssim_am` =
`ssim` x upsampled, grey-dilated alignment map (§II-C).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqjax import inference
from vqjax.config_checks import get, odd, one_of, positive_int, require
from vqjax.data.augment import augment_images, resolve_policy
from vqjax.inference import to_unit_range
from vqjax.models import COMPUTE_DTYPES
from vqjax.models.vqvae import ARCHITECTURES, VQVAE
from vqjax.ops import continuous_bernoulli
from vqjax.ops.anomaly_maps import CHANNEL_REDUCTIONS, ssim_anomaly_map, upsampled_alignment_map
from vqjax.ops.morphology import grey_dilation
from vqjax.ops.ssim import WINDOWS
from vqjax.train import train

LIKELIHOODS = ("continuous_bernoulli", "mse")  # Gangloff Eq. 4, Wang et al. Eq. 3
_USAGE_DECAY = 0.99  # per-step decay of the code-usage moving average (~100-step memory)


def _eval_vars(variables):
  """The collections the VQ-VAE module reads at inference (not the trainer's vq_stats)."""
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def check_vq_model_config(config) -> None:
  """The VQ-VAE's blocks (model, loss), shared by both VQ methods."""
  for key in ("model.channels", "model.num_residual_layers", "model.num_codes",
              "model.embedding_dim"):
    positive_int(config, key)
  size = config.data.image_size
  downs = positive_int(config, "model.num_downsamplings")
  require(size % (2**downs) == 0 and size // (2**downs) >= 1, "data.image_size",
          f"a multiple of 2^model.num_downsamplings = {2**downs}", size)
  one_of(config, "model.dtype", tuple(COMPUTE_DTYPES))
  one_of(config, "model.architecture", ARCHITECTURES)
  one_of(config, "loss.likelihood", LIKELIHOODS)
  require(get(config, "loss.beta") >= 0, "loss.beta", "a non-negative number", config.loss.beta)
  require(get(config, "loss.dead_code_threshold") >= 0, "loss.dead_code_threshold",
          "a number >= 0 (0 = no restarts)", config.loss.dead_code_threshold)


def codebook_stats(indices: np.ndarray, num_codes: int) -> dict:
  """Fraction of codes used and perplexity of code frequencies over indices [N,h,w]."""
  counts = np.bincount(indices.reshape(-1), minlength=num_codes).astype(np.float64)
  p = counts / counts.sum()
  nz = p[p > 0]
  return {"fraction_used": float(np.mean(counts > 0)),
          "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))), "num_codes": num_codes}


@dataclasses.dataclass(frozen=True)
class VQVAESSIM:
  """The surface every method exposes to the trainer and the evaluator."""
  model: VQVAE
  beta: float
  anomaly: ml_collections.FrozenConfigDict
  dead_code_threshold: float = 0.0
  # 'continuous_bernoulli' (Gangloff Eq. 4) or 'mse' (Wang et al. 2020 Eq. 3).
  likelihood: str = "continuous_bernoulli"
  augment: ml_collections.FrozenConfigDict | None = None  # resolved policy + parameters
  variants: tuple[str, ...] = ("ssim", "ssim_am")
  progress_metrics = (("codebook_usage", "codes used"),)  # shown by the trainer's bar

  @staticmethod
  def check_config(config) -> None:
    check_vq_model_config(config)
    size = config.data.image_size
    one_of(config, "anomaly.ssim_window", WINDOWS)
    odd(config, "anomaly.ssim_window_size")
    require(config.anomaly.ssim_window_size <= size, "anomaly.ssim_window_size",
            f"at most data.image_size ({size})", config.anomaly.ssim_window_size)
    require(get(config, "anomaly.ssim_sigma") > 0, "anomaly.ssim_sigma", "a positive number",
            config.anomaly.ssim_sigma)
    one_of(config, "anomaly.ssim_channel_reduction", CHANNEL_REDUCTIONS)
    odd(config, "anomaly.ssim_dilation")
    odd(config, "anomaly.am_dilation")
    one_of(config, "anomaly.am_upsample", ("bilinear", "nearest"))

  @classmethod
  def from_config(cls, config, num_channels: int) -> "VQVAESSIM":
    m = config.model
    model = VQVAE(channels=m.channels, num_downsamplings=m.num_downsamplings,
                  num_residual_layers=m.num_residual_layers, num_codes=m.num_codes,
                  embedding_dim=m.embedding_dim, out_channels=num_channels,
                  dtype=COMPUTE_DTYPES[m.dtype], architecture=m.architecture)
    return cls(model=model, beta=config.loss.beta,
               anomaly=ml_collections.FrozenConfigDict(config.anomaly),
               dead_code_threshold=config.loss.dead_code_threshold,
               likelihood=config.loss.likelihood,
               augment=ml_collections.FrozenConfigDict(
                   {**config.augment.to_dict(),
                    "policy": resolve_policy(config.augment.policy, config.data.category)}))

  def fit(self, config, dataset, workdir, *, log, show_progress=True):
    """Trains on dataset.train; returns (variables, summary)."""
    return train(config, self, dataset.train.images, workdir, log=log,
                 show_progress=show_progress)

  def run_info(self, variables, dataset, summary, *, batch_size, mesh) -> dict:
    """Codebook use over the codes of the training images (their maps are not needed)."""
    encode = inference.make_predict_fn(self.encode_indices, mesh)
    indices = inference.predict_split(encode, variables, dataset.train.images, batch_size, mesh)
    return {"codebook": codebook_stats(indices, self.model.num_codes)}

  def reconstruction(self, decoder_output):
    """Image-space reconstruction in [0,1] from the decoder output: the continuous-Bernoulli
    mean (a decision: the mean, not lambda) or, for the MSE model, the output itself."""
    if self.likelihood == "mse":
      return decoder_output
    return continuous_bernoulli.mean(decoder_output)

  def encode_indices(self, variables, images):
    """images [B,H,W,C] -> codebook indices [B,h,w] int32 (eval mode)."""
    z_e = self.model.apply(_eval_vars(variables), to_unit_range(images), method=VQVAE.encode)
    return self.model.apply(_eval_vars(variables), z_e, method=VQVAE.quantize)[0]

  def decode_indices(self, variables, indices):
    """indices [B,h,w] -> reconstructions [B,H,W,C] in [0,1]-ish (eval mode)."""
    return self.reconstruction(
        self.model.apply(_eval_vars(variables), indices, method=VQVAE.decode_from_indices))

  def init(self, rng, images):
    """Variables {'params', 'batch_stats', 'vq_stats'} for images [B,H,W,C].

    vq_stats: usage [K] = moving average of the fraction of latent positions assigned to
    each code (starts uniform); candidates [K,D] = encoder outputs of the latest batch.
    """
    variables = dict(self.model.init(rng, to_unit_range(images), train=False))
    variables.setdefault("batch_stats", {})  # the 'wang' architecture has no BatchNorm
    k, d = self.model.num_codes, self.model.embedding_dim
    variables["vq_stats"] = {"usage": jnp.full((k,), 1.0 / k, jnp.float32),
                             "candidates": jnp.zeros((k, d), jnp.float32)}
    return variables

  def loss(self, params, model_state, images, rng):
    """images [B,H,W,C] (uint8, or float in [0,1]) -> (loss, (new_model_state, metrics))."""
    images = to_unit_range(images)
    if self.augment is not None:
      images = augment_images(images, jax.random.fold_in(rng, 1), self.augment.policy,
                              max_degrees=self.augment.max_rotation_degrees,
                              crop_fraction=self.augment.crop_fraction,
                              max_translation=self.augment.max_translation)
    (logits, aux), updates = self.model.apply(
        {"params": params, "batch_stats": model_state["batch_stats"]}, images, train=True,
        mutable=["batch_stats"])
    if self.likelihood == "mse":
      nll = jnp.mean(jnp.square(images - logits))
    else:
      nll = -jnp.mean(continuous_bernoulli.log_prob(images, logits))
    z_e, z_q = aux["z_e"], aux["z_q"]
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z_e) - z_q))
    commitment_loss = jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(z_q)))
    loss = nll + codebook_loss + self.beta * commitment_loss
    counts = jnp.zeros(self.model.num_codes).at[aux["indices"].reshape(-1)].add(1.0)
    usage = (_USAGE_DECAY * model_state["vq_stats"]["usage"]
             + (1 - _USAGE_DECAY) * counts / counts.sum())
    flat_z = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1])
    picks = jax.random.randint(rng, (self.model.num_codes,), 0, flat_z.shape[0])
    new_state = {"batch_stats": updates.get("batch_stats", {}),
                 "vq_stats": {"usage": usage, "candidates": flat_z[picks]}}
    metrics = dict(loss=loss, nll=nll, codebook_loss=codebook_loss,
                   commitment_loss=commitment_loss, codebook_usage=jnp.mean(counts > 0))
    return loss, (new_state, metrics)

  def post_update(self, params, model_state):
    """Restarts dead codes: a code whose usage average fell below dead_code_threshold / K
    is moved onto a random encoder output of the latest batch (a training stabiliser
    against codebook collapse; not in the paper; dead_code_threshold = 0 turns it off)."""
    if self.dead_code_threshold <= 0:
      return params, model_state
    stats = model_state["vq_stats"]
    k = self.model.num_codes
    dead = stats["usage"] < self.dead_code_threshold / k
    codebook = jnp.where(dead[:, None], stats["candidates"], params["codebook"])
    usage = jnp.where(dead, 1.0 / k, stats["usage"])
    return ({**params, "codebook": codebook},
            {**model_state, "vq_stats": {**stats, "usage": usage}})

  def predict(self, variables, images):
    """images [B,H,W,C] (uint8, or float in [0,1]) -> dict(reconstructions [B,H,W,C] in
    [0,1], maps {variant: [B,H,W]}, indices [B,h,w]). Higher map values = more anomalous."""
    images = to_unit_range(images)
    a = self.anomaly
    logits, aux = self.model.apply(_eval_vars(variables), images, train=False)
    reconstructions = self.reconstruction(logits)
    sm = ssim_anomaly_map(images, reconstructions, channel_reduction=a.ssim_channel_reduction,
                          window=a.ssim_window, window_size=a.ssim_window_size,
                          sigma=a.ssim_sigma, k1=a.ssim_k1, k2=a.ssim_k2, data_range=1.0,
                          sample_covariance=a.ssim_sample_covariance)
    # UCSD-Ped1 (§III-C) also dilates SM; 1 = off.
    sm = grey_dilation(sm, a.ssim_dilation)
    height, width = images.shape[1:3]
    am = upsampled_alignment_map(aux["alignment"], height, width, method=a.am_upsample,
                                 dilation=a.am_dilation)
    maps = {"ssim": sm, "ssim_am": sm * am}
    return dict(reconstructions=reconstructions, maps={v: maps[v] for v in self.variants},
                indices=aux["indices"])
