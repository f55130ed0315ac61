"""VQ-VAE SSIM / SSIM+AM on an MVTec-AD-layout folder (Gangloff et al. 2022 §III-B, Table I).

Default preset: a CPU-sized run on the embedded demo data (minutes on 2 cores), chosen by its
mean over the nine demo categories (NOTES.md):
  python -m vqjax.main --config configs/mvtec_vq.py
Paper settings (256x256, 3 downsamplings, 256 channels, M=512, D=256), for a GPU:
  python -m vqjax.main --config configs/mvtec_vq.py:paper \
      --config.data.root=/data/mvtec_ad --config.data.category=bottle
All 15 categories, then results.md / results.csv beside the paper's Table I:
  python -m vqjax.main --config configs/mvtec_vq.py:paper \
      --config.data.root=/data/mvtec_ad --config.data.category=all
Tiny smoke preset used by the tests: configs/mvtec_vq.py:smoke
"""
from __future__ import annotations

import ml_collections

from vqjax.config_defaults import apply_paper_model, apply_smoke_preset, vqvae_ssim_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = vqvae_ssim_config()
  if preset == "default":
    # Chosen by the mean over the nine demo categories (NOTES.md): the paper's 11 px window
    # scaled to 64 px images (11 * 64 / 256 ~ 3), and no dead-code restarts, as in the paper.
    config.anomaly.ssim_window_size = 3
    config.anomaly.ssim_sigma = 0.5
    config.loss.dead_code_threshold = 0.0
  elif preset == "paper":
    config.data.image_size = 256
    apply_paper_model(config, num_downsamplings=3)
    config.anomaly.am_dilation = 7
    config.eval.min_defect_area = 64  # 16 px at 64x64 scaled to 256x256
  elif preset == "smoke":
    config.data.image_size = 32
    apply_smoke_preset(config)
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/mvtec_vq.py; "
                     "expected one of: default, paper, smoke")
  return config
