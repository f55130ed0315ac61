"""Validates an experiment config where it enters, naming the key and what was expected.

The keys every experiment has (workdir, seed, data, train, augment, eval) are checked here;
each method checks its own blocks in its `check_config` (vqjax/methods/base.py), with the
helpers below.
"""
from __future__ import annotations

import math

import jax

from vqjax.data import DATASETS
from vqjax.data.augment import POLICIES as AUGMENT_POLICIES
from vqjax.metrics import IMAGE_SCORE_REDUCTIONS
from vqjax.optimizers import OPTIMIZERS, SCHEDULES


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def require(ok: bool, key: str, expected: str, value) -> None:
  if not ok:
    raise ConfigError(f"config.{key} = {value!r}: expected {expected}")


def positive_int(config, key: str) -> int:
  value = get(config, key)
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
           "a positive integer", value)
  return value


def odd(config, key: str) -> None:
  value = positive_int(config, key)
  require(value % 2 == 1, key, "an odd integer (a centred window)", value)


def one_of(config, key: str, choices) -> None:
  value = get(config, key)
  require(value in choices, key, f"one of {list(choices)}", value)


def _finite_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def get(config, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing (the config file must define it)")
    node = node[part]
  return node


def validate_config(config) -> None:
  """Raises ConfigError for settings that would fail later or silently mislead."""
  from vqjax.methods import METHODS  # local: methods import the helpers of this module
  method = get(config, "method")
  require(method in METHODS, "method", f"one of {sorted(METHODS)}", method)
  require(isinstance(config.workdir, str) and config.workdir.strip() != "", "workdir",
          "a non-empty folder path", config.workdir)
  require(isinstance(config.seed, int), "seed", "an integer", config.seed)
  if config.data.category == "all":
    require("{category}" in config.workdir, "workdir",
            "a path containing '{category}' when data.category=all (one workdir per category)",
            config.workdir)
  one_of(config, "data.dataset", DATASETS)
  require(isinstance(get(config, "data.download"), bool), "data.download", "True or False",
          config.data.download)
  root = get(config, "data.root")
  require(root is None or (isinstance(root, str) and root != ""), "data.root",
          "unset (embedded demo data) or a folder path", root)
  require(isinstance(config.data.category, str) and config.data.category != "",
          "data.category", "a category folder name", config.data.category)
  if config.data.dataset == "mvtec":
    # A folder name under data.root, also used in workdir paths: no way out of either.
    require(config.data.category not in (".", "..") and not any(
        c in config.data.category for c in "/\\"), "data.category",
        "a folder name under data.root (no path separators, not '.' or '..')",
        config.data.category)
  size = positive_int(config, "data.image_size")
  texture_size = get(config, "data.texture_image_size")
  if texture_size is not None:
    require(isinstance(texture_size, int) and texture_size >= size and texture_size % size == 0,
            "data.texture_image_size", f"unset or a multiple of data.image_size ({size})",
            texture_size)
    require(getattr(METHODS[method], "crops_large_images", False), "data.texture_image_size",
            f"unset: method {method!r} works on whole images of data.image_size", texture_size)
  cache_mb = get(config, "data.decode_cache_mb")
  require(_finite_number(cache_mb) and cache_mb >= 0, "data.decode_cache_mb",
          "MB of decoded training images to keep per process (>= 0)", cache_mb)
  frac = get(config, "data.val_fraction")
  require(0.0 <= frac <= 0.5, "data.val_fraction", "a number in [0, 0.5]", frac)

  one_of(config, "sweep.parallel", ("serial", "per_device"))
  require(isinstance(get(config, "sweep.category_index"), int) and
          config.sweep.category_index >= -1, "sweep.category_index",
          "-1 (every category) or the index of one category", config.sweep.category_index)
  require(isinstance(get(config, "sweep.merge_only"), bool), "sweep.merge_only", "True or False",
          config.sweep.merge_only)
  per_device = (config.data.category == "all" and config.sweep.parallel == "per_device"
                and config.sweep.category_index < 0 and not config.sweep.merge_only)
  n_dev = 1 if per_device else jax.device_count()  # per_device: each run has one device
  for key in ("train.batch_size", "eval.batch_size"):
    value = positive_int(config, key)
    require(value % n_dev == 0, key, f"a multiple of the device count ({n_dev})", value)
  check_train_block(config, "train")

  one_of(config, "augment.policy", AUGMENT_POLICIES)
  require(0 <= get(config, "augment.max_rotation_degrees") <= 180,
          "augment.max_rotation_degrees", "degrees in [0, 180]", config.augment.max_rotation_degrees)
  require(0 < get(config, "augment.crop_fraction") <= 1, "augment.crop_fraction",
          "a fraction in (0, 1]", config.augment.crop_fraction)
  require(0 <= get(config, "augment.max_translation") < 1, "augment.max_translation",
          "a fraction of the image size in [0, 1)", config.augment.max_translation)
  one_of(config, "eval.image_score", IMAGE_SCORE_REDUCTIONS)
  limit = get(config, "eval.pro_fpr_limit")
  require(0 < limit <= 1, "eval.pro_fpr_limit", "a number in (0, 1]", limit)
  one_of(config, "eval.threshold_protocol", ("bergmann",))
  positive_int(config, "eval.min_defect_area")
  require(isinstance(config.eval.save_arrays, bool), "eval.save_arrays", "True or False",
          config.eval.save_arrays)
  require(isinstance(config.eval.num_overlays, int) and config.eval.num_overlays >= 0,
          "eval.num_overlays", "an integer >= 0", config.eval.num_overlays)
  METHODS[method].check_config(config)


def check_train_block(config, block: str) -> None:
  """A training block (train, prior_train, ...): length, intervals and optimizer keys.
  Optimizer keys a block does not define take vqjax.optimizers.DEFAULTS."""
  positive_int(config, f"{block}.batch_size")
  steps = get(config, f"{block}.num_steps")
  require(isinstance(steps, int) and steps >= 0, f"{block}.num_steps", "an integer >= 0", steps)
  node = get(config, block)
  epochs = node.get("num_epochs")
  require(epochs is None or (isinstance(epochs, (int, float)) and epochs >= 0),
          f"{block}.num_epochs", "unset, 0 (use num_steps) or a number of epochs > 0", epochs)
  lr = get(config, f"{block}.learning_rate")
  require(_finite_number(lr) and lr > 0, f"{block}.learning_rate", "a finite positive number",
          lr)
  for key in ("log_every", "checkpoint_every", "max_checkpoints"):
    positive_int(config, f"{block}.{key}")
  if "optimizer" in node:
    one_of(config, f"{block}.optimizer", OPTIMIZERS)
  if "schedule" in node:
    one_of(config, f"{block}.schedule", SCHEDULES)
  for key in ("b1", "b2", "weight_decay", "warmup_steps", "end_learning_rate"):
    if key in node:
      require(_finite_number(node[key]), f"{block}.{key}", "a finite number", node[key])
  for key in ("b1", "b2"):
    if key in node:
      require(0 <= node[key] < 1, f"{block}.{key}", "a number in [0, 1)", node[key])
  for key in ("weight_decay", "warmup_steps", "end_learning_rate"):
    if key in node:
      require(node[key] >= 0, f"{block}.{key}", "a number >= 0", node[key])
