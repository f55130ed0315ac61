"""VQ-VAE SSIM / SSIM+AM on UCSD-Ped1 (Gangloff et al. 2022 §III-C, Table II: pixel AUROC 0.95).

128x128 greyscale frames, 2 downsamplings -> 32x32 latent, grey dilation also applied to SM.
The dataset is read from the official folder (no embedded copy):
  python -m vqjax.main --config configs/ucsd_vq.py --config.data.root=/data/UCSD_Anomaly_Dataset.v1p2
Smoke preset used by the tests: configs/ucsd_vq.py:smoke
"""
from __future__ import annotations

import ml_collections

from vqjax.config_defaults import apply_paper_model, apply_smoke_preset, vqvae_ssim_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = vqvae_ssim_config()
  config.data.dataset = "ucsd_ped1"
  config.data.category = "ped1"
  config.data.image_size = 128
  apply_paper_model(config, num_downsamplings=2)
  # §III-C: "much better results were obtained by performing a morphological grey dilation
  # also on the SM anomaly map". Size not given: decision, 7 px at 128x128.
  config.anomaly.ssim_dilation = 7
  config.anomaly.am_dilation = 7
  config.eval.min_defect_area = 32
  if preset == "default":
    pass
  elif preset == "smoke":
    config.data.image_size = 32
    apply_smoke_preset(config)
    config.anomaly.ssim_dilation = 3
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/ucsd_vq.py; expected default or smoke")
  return config
