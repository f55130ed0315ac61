"""VQ-VAE + PixelSNAIL latent resampling (Wang et al. 2020).

Stage 1 (§4.3.2): a VQ-VAE trained with the MSE reconstruction loss (Eq. 3).
Stage 2 (§3.2): a PixelSNAIL prior over the index tables of the training images,
cross-entropy. Scoring (§3.3-§3.4): codes that are unlikely under the prior (and whose
bottom-half neighbourhood is too, Eq. 5) are resampled in raster order
(`vqjax.ops.latent_resampling.resample`, exact and fast); the map is the per-pixel L2
distance between the image decoded from the resampled table and the direct reconstruction,
bilateral-filtered. eta is a config value or picked by grid search (§4.3.3) on held-out
normal images with synthetic rectangles, never on test.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np

from vqjax import inference, metrics, sharding
from vqjax.config_checks import check_train_block, get, one_of, positive_int, require
from vqjax.inference import to_unit_range
from vqjax.methods.vqvae_ssim import VQVAESSIM, check_vq_model_config, codebook_stats
from vqjax.models import COMPUTE_DTYPES
from vqjax.models.pixelsnail import PixelSNAIL, nll_per_table
from vqjax.ops.bilateral import bilateral_filter
from vqjax.ops.latent_resampling import resample
from vqjax.train import train

RESIDUALS = ("restored_vs_direct", "input_vs_output")


@dataclasses.dataclass(frozen=True)
class PixelSNAILPrior:
  """Trainer surface for the prior: batches are index tables [B,h,w] int32."""
  model: PixelSNAIL

  def init(self, rng, tables):
    return self.model.init(rng, tables.astype(jnp.int32), train=False)

  def loss(self, params, model_state, tables, rng):
    logits = self.model.apply({"params": params}, tables.astype(jnp.int32), train=True,
                              rngs={"dropout": rng})
    nll = jnp.mean(nll_per_table(logits, tables.astype(jnp.int32)))
    return nll, (model_state, {"loss": nll, "bits_per_code": nll / jnp.log(2.0)})

  def logits(self, variables, tables):
    """tables [B,h,w] -> logits [B,h,w,K] of p(z_ij | z_<ij) (eval mode)."""
    return self.model.apply({"params": variables["params"]}, tables, train=False)


def add_rectangles(images: np.ndarray, area_fraction: float, seed: int):
  """Validation defects of §4.3.3: one black or grey axis-aligned rectangle per image,
  `area_fraction` of the image area, random aspect and position.
  images [N,H,W,C] uint8 -> (images with defects, masks [N,H,W] bool)."""
  rng = np.random.default_rng(seed)
  out, masks = images.copy(), np.zeros(images.shape[:3], bool)
  n, height, width = images.shape[:3]
  for i in range(n):
    area = max(1.0, area_fraction * height * width)
    aspect = rng.uniform(0.5, 2.0)
    h = int(np.clip(round(np.sqrt(area * aspect)), 1, height))
    w = int(np.clip(round(area / h), 1, width))
    top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    out[i, top:top + h, left:left + w] = 0 if rng.random() < 0.5 else 128
    masks[i, top:top + h, left:left + w] = True
  return out, masks


@dataclasses.dataclass(frozen=True)
class LatentResampling:
  vq: VQVAESSIM
  prior: PixelSNAILPrior
  anomaly: ml_collections.FrozenConfigDict
  variants: tuple[str, ...] = ("resample",)
  progress_metrics = VQVAESSIM.progress_metrics

  @staticmethod
  def check_config(config) -> None:
    """The VQ-VAE's blocks, the prior and its training block, and the scoring (§3.3-§3.4)."""
    check_vq_model_config(config)
    for key in ("prior.channels", "prior.num_blocks", "prior.num_res_blocks", "prior.num_heads",
                "prior.kernel_size"):
      positive_int(config, key)
    check_train_block(config, "prior_train")
    require(config.prior.channels % config.prior.num_heads == 0, "prior.num_heads",
            f"a divisor of prior.channels ({config.prior.channels})", config.prior.num_heads)
    require(0 <= get(config, "prior.dropout") < 1, "prior.dropout", "a number in [0, 1)",
            config.prior.dropout)
    eta = get(config, "anomaly.eta")
    require(0 <= eta < 1, "anomaly.eta", "a probability in [0, 1) (0 = grid search)", eta)
    grid = get(config, "anomaly.eta_grid")
    require(len(grid) > 0 and all(0 < e < 1 for e in grid), "anomaly.eta_grid",
            "a non-empty list of probabilities in (0, 1)", grid)
    require(0 < get(config, "anomaly.val_rectangle_area") < 1, "anomaly.val_rectangle_area",
            "a fraction of the image area in (0, 1)", config.anomaly.val_rectangle_area)
    for key in ("anomaly.local_constraint", "anomaly.interior_only"):
      require(isinstance(get(config, key), bool), key, "True or False", get(config, key))
    slots = get(config, "anomaly.resample_slots")
    require(isinstance(slots, int) and not isinstance(slots, bool) and slots >= 0,
            "anomaly.resample_slots", "a whole number >= 0 (0 = the whole eval batch)", slots)
    one_of(config, "anomaly.residual", RESIDUALS)
    positive_int(config, "anomaly.bilateral_diameter")

  @classmethod
  def from_config(cls, config, num_channels: int) -> "LatentResampling":
    p = config.prior
    prior = PixelSNAIL(num_codes=config.model.num_codes, channels=p.channels,
                       num_blocks=p.num_blocks, num_res_blocks=p.num_res_blocks,
                       num_heads=p.num_heads, kernel_size=p.kernel_size, dropout=p.dropout,
                       dtype=COMPUTE_DTYPES[config.model.dtype])
    return cls(vq=VQVAESSIM.from_config(config, num_channels), prior=PixelSNAILPrior(prior),
               anomaly=ml_collections.FrozenConfigDict(config.anomaly))

  def encode_indices(self, variables, images):
    """images [B,H,W,C] -> the VQ-VAE's codebook indices [B,h,w] (before resampling)."""
    return self.vq.encode_indices(variables["vqvae"], images)

  def run_info(self, variables, dataset, summary, *, batch_size, mesh) -> dict:
    """Prior training length, eta (and its search), codebook use on the training codes (from
    the index tables fit already encoded for the prior: no second pass over the images)."""
    return {k: summary[k] for k in ("prior_steps", "eta", "eta_search", "codebook")}

  def fit(self, config, dataset, workdir: pathlib.Path, *, log, show_progress=True):
    """Stage 1 (VQ-VAE), stage 2 (prior on its index tables), then eta (§4.3.3)."""
    vq_dir, prior_dir = workdir / "vqvae", workdir / "prior"
    vq_dir.mkdir(parents=True, exist_ok=True)
    prior_dir.mkdir(parents=True, exist_ok=True)
    log("stage 1/2: VQ-VAE")
    vq_vars, vq_summary = train(config, self.vq, dataset.train.images, vq_dir, log=log,
                                show_progress=show_progress)
    mesh = sharding.make_data_mesh()
    encode = inference.make_predict_fn(self.vq.encode_indices, mesh)
    tables = inference.predict_split(encode, vq_vars, dataset.train.images,
                                     config.eval.batch_size, mesh).astype(np.int32)
    log(f"stage 2/2: PixelSNAIL prior on {len(tables)} index tables {tables.shape[1:]}")
    prior_config = ml_collections.ConfigDict({"train": config.prior_train.to_dict(),
                                              "seed": config.seed, "train_block": "prior_train"})
    prior_vars, prior_summary = train(prior_config, self.prior, tables, prior_dir, log=log,
                                      show_progress=show_progress)
    variables = {"vqvae": vq_vars, "prior": prior_vars, "eta": jnp.float32(0.0)}
    eta, search = self.choose_eta(variables, dataset.val.images, config, mesh)
    log(f"eta = {eta:g} ({'config' if search is None else 'grid search on validation'})")
    variables["eta"] = jnp.float32(eta)
    summary = {"steps": vq_summary["steps"], "prior_steps": prior_summary["steps"],
               "compile_seconds": vq_summary["compile_seconds"] + prior_summary["compile_seconds"],
               "train_seconds": vq_summary["train_seconds"] + prior_summary["train_seconds"],
               "eta": eta, "eta_search": search,
               "codebook": codebook_stats(tables, self.vq.model.num_codes)}
    return variables, summary

  def choose_eta(self, variables, val_images: np.ndarray, config, mesh):
    """(eta, {eta: validation pixel AUROC} or None). Grid search maximises pixel AUROC on
    normal validation images with 1%-area black/grey rectangles (§4.3.3)."""
    if self.anomaly.eta > 0:
      return float(self.anomaly.eta), None
    if len(val_images) == 0:
      raise ValueError("config.anomaly.eta = 0 asks for a grid search, which needs validation "
                       "images: set data.val_fraction > 0 or give anomaly.eta")
    images, masks = add_rectangles(val_images, self.anomaly.val_rectangle_area, config.seed)
    predict_fn = inference.make_predict_fn(self.predict, mesh)
    scores = {}
    for eta in self.anomaly.eta_grid:
      out = inference.predict_split(predict_fn, {**variables, "eta": jnp.float32(eta)}, images,
                                    config.eval.batch_size, mesh)
      scores[float(eta)] = metrics.pixel_auroc(out["maps"]["resample"], masks)
    best = max(scores, key=lambda e: (scores[e], -e))  # ties: the smallest eta
    return best, {f"{e:g}": s for e, s in scores.items()}

  def predict(self, variables, images):
    """images [B,H,W,C] -> dict(reconstructions [B,H,W,C] (direct), maps {'resample'},
    indices [B,h,w], resampled_indices [B,h,w]). Higher = more anomalous."""
    a = self.anomaly
    vq_vars, prior_vars = variables["vqvae"], variables["prior"]
    indices = self.vq.encode_indices(vq_vars, images)
    direct = self.vq.decode_indices(vq_vars, indices)
    if a.residual == "restored_vs_direct":  # Eq. 6
      restored_indices = resample(lambda t: self.prior.logits(prior_vars, t), indices,
                                  variables["eta"], local_constraint=a.local_constraint,
                                  interior_only=a.interior_only,
                                  slots=a.resample_slots or None).tables
      residual = self.vq.decode_indices(vq_vars, restored_indices) - direct
    else:  # §4.5 ablation: input vs its direct reconstruction; the prior plays no part
      restored_indices = indices
      residual = to_unit_range(images) - direct
    distance = jnp.sqrt(jnp.sum(jnp.square(residual), axis=-1)) * 255.0  # 0..255 units
    maps = bilateral_filter(distance, diameter=a.bilateral_diameter,
                            sigma_color=a.bilateral_sigma_color,
                            sigma_space=a.bilateral_sigma_space)
    return dict(reconstructions=jnp.clip(direct, 0.0, 1.0), maps={"resample": maps},
                indices=indices, resampled_indices=restored_indices)

