"""Optimizers from a config block (config.train, config.prior_train, a method's own block).

Keys (missing ones take these defaults, which are plain Adam at a constant rate):
  optimizer "adam" | "adamw" | "adam_l2" (torch's Adam(weight_decay=...): the decay is added to
    the gradient before Adam's scaling, not decoupled as in adamw);  learning_rate;  b1 0.9;  b2 0.999;  weight_decay 0.0 (adamw, adam_l2);
  schedule "constant" | "cosine" | "polynomial";  warmup_steps 0;  decay_power 1.0 and
  end_learning_rate 0.0 (polynomial; cosine decays to end_learning_rate too);
  frozen_params (): top-level parameter names that get no updates.
"""
from __future__ import annotations

import optax

OPTIMIZERS = ("adam", "adamw", "adam_l2")
SCHEDULES = ("constant", "cosine", "polynomial")
DEFAULTS = {"optimizer": "adam", "b1": 0.9, "b2": 0.999, "weight_decay": 0.0,
            "schedule": "constant", "warmup_steps": 0, "decay_power": 1.0,
            "end_learning_rate": 0.0, "frozen_params": ()}


def _get(opt_config, key):
  return opt_config.get(key, DEFAULTS[key]) if hasattr(opt_config, "get") else DEFAULTS[key]


def learning_rate_schedule(opt_config, num_steps: int):
  """A float (constant, no warmup: the optimizer state then holds no step count) or an
  optax schedule of the step."""
  peak, schedule = opt_config.learning_rate, _get(opt_config, "schedule")
  warmup = _get(opt_config, "warmup_steps")
  end = _get(opt_config, "end_learning_rate")
  if schedule == "constant" and warmup == 0:
    return peak
  decay_steps = max(1, num_steps - warmup)
  if schedule == "constant":
    main = optax.constant_schedule(peak)
  elif schedule == "cosine":
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
  elif schedule == "polynomial":
    main = optax.polynomial_schedule(peak, end, _get(opt_config, "decay_power"), decay_steps)
  else:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def make_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
  """The optimizer described by opt_config for a run of num_steps updates."""
  lr = learning_rate_schedule(opt_config, num_steps)
  name, b1, b2 = _get(opt_config, "optimizer"), _get(opt_config, "b1"), _get(opt_config, "b2")
  if name == "adam":
    tx = optax.adam(lr, b1=b1, b2=b2)
  elif name == "adamw":
    tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=_get(opt_config, "weight_decay"))
  elif name == "adam_l2":
    tx = optax.chain(optax.add_decayed_weights(_get(opt_config, "weight_decay")),
                     optax.adam(lr, b1=b1, b2=b2))
  else:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
  frozen = tuple(_get(opt_config, "frozen_params"))
  if not frozen:
    return tx
  label = lambda params: {k: "frozen" if k in frozen else "trained" for k in params}
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, label)
