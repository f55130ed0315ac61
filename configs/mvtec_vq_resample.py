"""VQ-VAE + PixelSNAIL latent resampling (Wang et al. 2020) on an MVTec-AD-layout folder.

Default preset: CPU-sized, on the embedded demo data:
  python -m vqjax.main --config configs/mvtec_vq_resample.py
Paper settings (§4.3.2: 256x256 -> 32x32x32 latent, K=512, 8 residual blocks, PixelSNAIL
(1 residual + 1 attention block) x 3, Adam 3e-4, bilateral d=20), for a GPU:
  python -m vqjax.main --config configs/mvtec_vq_resample.py:paper \
      --config.data.root=/data/mvtec_ad --config.data.category=bottle
Ablations (§4.5): --config.anomaly.residual=input_vs_output, --config.anomaly.local_constraint=False
Timing preset (paper-size networks, 1500 + 1500 steps on the demo data, eta 5e-4), used by
benchmarks/gpu_session.sh to time the resampling stage: configs/mvtec_vq_resample.py:timing
Smoke preset used by the tests: configs/mvtec_vq_resample.py:smoke
"""
from __future__ import annotations

import ml_collections

from vqjax.config_defaults import apply_smoke_preset, vqvae_resample_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = vqvae_resample_config()
  if preset == "default":
    pass
  elif preset in ("paper", "timing"):
    config.data.image_size = 256
    config.model.architecture = "wang"  # §4.3.2: no BatchNorm, a 3x3 stride-1 conv
    config.model.channels = 128  # not given; rosinality/vq-vae-2's width
    config.model.num_downsamplings = 3
    config.model.num_residual_layers = 8
    config.model.num_codes = 512
    config.model.embedding_dim = 32
    config.loss.dead_code_threshold = 0.0  # no restarts: not in the paper
    config.train.batch_size = 256  # §4.3.2: 100 epochs, batch 256
    config.train.num_epochs = 100.0
    config.prior.channels = 128
    config.prior.num_heads = 8
    config.prior_train.batch_size = 64  # §4.3.2: 150 epochs, batch 64
    config.prior_train.num_epochs = 150.0
    config.anomaly.bilateral_diameter = 20
    config.anomaly.interior_only = True  # Eq. 5 is defined for 1 < m, n < M, N
    config.eval.min_defect_area = 64
    config.eval.image_score = "max"  # MVTec's convention (the CPU default takes the mean)
    if preset == "timing":  # paper-size nets, briefly trained: for timing, not for accuracy
      config.train.batch_size = 32
      config.train.num_epochs = None
      config.train.num_steps = 1500
      config.prior_train.num_epochs = None
      config.prior_train.num_steps = 1500
      config.anomaly.eta = 5e-4  # §4.3.3's value, no grid search
  elif preset == "smoke":
    config.data.image_size = 32
    apply_smoke_preset(config)
    config.prior.channels = 8
    config.prior.num_blocks = 1
    config.prior.num_heads = 2
    config.prior_train.batch_size = 8
    config.prior_train.num_steps = 4
    config.prior_train.log_every = 2
    config.prior_train.checkpoint_every = 2
    config.anomaly.eta_grid = (1e-3, 1e-1)
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/mvtec_vq_resample.py; "
                     "expected one of: default, paper, timing, smoke")
  return config
