"""Validates an experiment config where it enters, naming the key and what was expected."""
from __future__ import annotations

import jax

from vqjax.data import DATASETS
from vqjax.data.augment import POLICIES as AUGMENT_POLICIES
from vqjax.methods.latent_resampling import RESIDUALS
from vqjax.methods.vqvae_ssim import LIKELIHOODS
from vqjax.metrics import IMAGE_SCORE_REDUCTIONS
from vqjax.models import COMPUTE_DTYPES
from vqjax.ops.anomaly_maps import CHANNEL_REDUCTIONS
from vqjax.ops.ssim import WINDOWS



class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def _require(ok: bool, key: str, expected: str, value) -> None:
  if not ok:
    raise ConfigError(f"config.{key} = {value!r}: expected {expected}")


def _positive_int(config, key: str) -> int:
  value = _get(config, key)
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
           "a positive integer", value)
  return value


def _odd(config, key: str) -> None:
  value = _positive_int(config, key)
  _require(value % 2 == 1, key, "an odd integer (a centred window)", value)


def _one_of(config, key: str, choices) -> None:
  value = _get(config, key)
  _require(value in choices, key, f"one of {list(choices)}", value)


def _get(config, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing (the config file must define it)")
    node = node[part]
  return node


def validate_config(config) -> None:
  """Raises ConfigError for settings that would fail later or silently mislead."""
  _require(isinstance(config.workdir, str) and config.workdir.strip() != "", "workdir",
           "a non-empty folder path", config.workdir)
  _require(isinstance(config.seed, int), "seed", "an integer", config.seed)
  if config.data.category == "all":
    _require("{category}" in config.workdir, "workdir",
             "a path containing '{category}' when data.category=all (one workdir per category)",
             config.workdir)
  _one_of(config, "data.dataset", DATASETS)
  _require(isinstance(_get(config, "data.download"), bool), "data.download", "True or False",
           config.data.download)
  root = _get(config, "data.root")
  _require(root is None or (isinstance(root, str) and root != ""), "data.root",
           "unset (embedded demo data) or a folder path", root)
  _require(isinstance(config.data.category, str) and config.data.category != "",
           "data.category", "a category folder name", config.data.category)
  size = _positive_int(config, "data.image_size")
  frac = _get(config, "data.val_fraction")
  _require(0.0 <= frac <= 0.5, "data.val_fraction", "a number in [0, 0.5]", frac)

  for key in ("model.channels", "model.num_residual_layers", "model.num_codes",
              "model.embedding_dim"):
    _positive_int(config, key)
  downs = _positive_int(config, "model.num_downsamplings")
  _require(size % (2**downs) == 0 and size // (2**downs) >= 1, "data.image_size",
           f"a multiple of 2^model.num_downsamplings = {2**downs}", size)
  _one_of(config, "model.dtype", tuple(COMPUTE_DTYPES))
  _one_of(config, "loss.likelihood", LIKELIHOODS)
  _require(_get(config, "loss.beta") >= 0, "loss.beta", "a non-negative number", config.loss.beta)

  n_dev = jax.device_count()
  for key in ("train.batch_size", "eval.batch_size"):
    value = _positive_int(config, key)
    _require(value % n_dev == 0, key, f"a multiple of the device count ({n_dev})", value)
  steps = _get(config, "train.num_steps")
  _require(isinstance(steps, int) and steps >= 0, "train.num_steps", "an integer >= 0", steps)
  lr = _get(config, "train.learning_rate")
  _require(lr > 0, "train.learning_rate", "a positive number", lr)
  for key in ("train.log_every", "train.checkpoint_every", "train.max_checkpoints"):
    _positive_int(config, key)

  _one_of(config, "augment.policy", AUGMENT_POLICIES)
  _require(0 <= _get(config, "augment.max_rotation_degrees") <= 180,
           "augment.max_rotation_degrees", "degrees in [0, 180]", config.augment.max_rotation_degrees)
  _require(0 < _get(config, "augment.crop_fraction") <= 1, "augment.crop_fraction",
           "a fraction in (0, 1]", config.augment.crop_fraction)
  if config.method == "vqvae_resample":
    _check_resample_keys(config)
  _one_of(config, "anomaly.ssim_window", WINDOWS)
  _odd(config, "anomaly.ssim_window_size")
  _require(config.anomaly.ssim_window_size <= size, "anomaly.ssim_window_size",
           f"at most data.image_size ({size})", config.anomaly.ssim_window_size)
  _require(_get(config, "anomaly.ssim_sigma") > 0, "anomaly.ssim_sigma", "a positive number",
           config.anomaly.ssim_sigma)
  _one_of(config, "anomaly.ssim_channel_reduction", CHANNEL_REDUCTIONS)
  _odd(config, "anomaly.ssim_dilation")
  _odd(config, "anomaly.am_dilation")
  _one_of(config, "anomaly.am_upsample", ("bilinear", "nearest"))
  _one_of(config, "eval.image_score", IMAGE_SCORE_REDUCTIONS)
  limit = _get(config, "eval.pro_fpr_limit")
  _require(0 < limit <= 1, "eval.pro_fpr_limit", "a number in (0, 1]", limit)
  _one_of(config, "eval.threshold_protocol", ("bergmann",))
  _positive_int(config, "eval.min_defect_area")
  _require(isinstance(config.eval.save_arrays, bool), "eval.save_arrays", "True or False",
           config.eval.save_arrays)
  _require(isinstance(config.eval.num_overlays, int) and config.eval.num_overlays >= 0,
           "eval.num_overlays", "an integer >= 0", config.eval.num_overlays)


def _check_resample_keys(config) -> None:
  """Keys of the latent-resampling method (Wang et al. 2020)."""
  for key in ("prior.channels", "prior.num_blocks", "prior.num_res_blocks", "prior.num_heads",
              "prior.kernel_size", "prior_train.batch_size", "prior_train.num_steps",
              "prior_train.log_every", "prior_train.checkpoint_every",
              "prior_train.max_checkpoints"):
    _positive_int(config, key)
  _require(config.prior.channels % config.prior.num_heads == 0, "prior.num_heads",
           f"a divisor of prior.channels ({config.prior.channels})", config.prior.num_heads)
  _require(0 <= _get(config, "prior.dropout") < 1, "prior.dropout", "a number in [0, 1)",
           config.prior.dropout)
  _require(_get(config, "prior_train.learning_rate") > 0, "prior_train.learning_rate",
           "a positive number", config.prior_train.learning_rate)
  eta = _get(config, "anomaly.eta")
  _require(0 <= eta < 1, "anomaly.eta", "a probability in [0, 1) (0 = grid search)", eta)
  grid = _get(config, "anomaly.eta_grid")
  _require(len(grid) > 0 and all(0 < e < 1 for e in grid), "anomaly.eta_grid",
           "a non-empty list of probabilities in (0, 1)", grid)
  _require(0 < _get(config, "anomaly.val_rectangle_area") < 1, "anomaly.val_rectangle_area",
           "a fraction of the image area in (0, 1)", config.anomaly.val_rectangle_area)
  _require(isinstance(_get(config, "anomaly.local_constraint"), bool),
           "anomaly.local_constraint", "True or False", config.anomaly.local_constraint)
  slots = _get(config, "anomaly.resample_slots")
  _require(isinstance(slots, int) and not isinstance(slots, bool) and slots >= 0,
           "anomaly.resample_slots",
           "a whole number >= 0 (0 = the whole eval batch)", slots)
  _one_of(config, "anomaly.residual", RESIDUALS)
  _positive_int(config, "anomaly.bilateral_diameter")
