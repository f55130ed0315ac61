"""VQ-VAE SSIM / SSIM+AM on an MVTec-AD-layout folder (Gangloff et al. 2022, Table I).

Default preset: a CPU-sized run on the embedded demo data (minutes on 2 cores):
  python -m vqjax.main --config configs/mvtec_vq.py
Paper settings (256x256, 3 downsamplings, 256 channels, M=512, D=256), for a GPU:
  python -m vqjax.main --config configs/mvtec_vq.py:paper \
      --config.data.root=/data/mvtec_ad --config.data.category=bottle
Tiny smoke preset used by the tests:
  python -m vqjax.main --config configs/mvtec_vq.py:smoke
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = ml_collections.ConfigDict()
  config.method = "vqvae_ssim"
  config.workdir = "runs/{method}_{category}"  # {category}, {method} are filled in
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.root = config_dict.placeholder(str)  # unset: embedded demo data
  config.data.category = "brick"
  config.data.image_size = 64
  config.data.val_fraction = 0.1

  config.model = ml_collections.ConfigDict()
  config.model.channels = 32
  config.model.num_downsamplings = 2
  config.model.num_residual_layers = 3
  config.model.num_codes = 128
  config.model.embedding_dim = 32
  config.model.dtype = "float32"  # or "bfloat16" (compute dtype; params, BN stay float32)

  config.loss = ml_collections.ConfigDict()
  config.loss.beta = 0.25  # commitment weight; paper silent, van den Oord's value
  # Codes used < threshold/K of the time (moving average) restart on an encoder output;
  # not in the paper, counters codebook collapse (0 = off).
  config.loss.dead_code_threshold = 0.1

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16
  config.train.num_steps = 1500
  config.train.learning_rate = 3e-4
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.max_checkpoints = 2

  config.anomaly = ml_collections.ConfigDict()
  config.anomaly.ssim_window = "gaussian"  # or "uniform"
  config.anomaly.ssim_window_size = 11
  config.anomaly.ssim_sigma = 1.5
  config.anomaly.ssim_k1 = 0.01
  config.anomaly.ssim_k2 = 0.03
  config.anomaly.ssim_sample_covariance = False
  config.anomaly.ssim_channel_reduction = "mean"  # or "product"
  config.anomaly.ssim_dilation = 1  # 1 = no dilation of SM (UCSD-Ped1 dilates it)
  config.anomaly.am_upsample = "bilinear"
  config.anomaly.am_dilation = 5  # grey-dilation square side in pixels (odd)

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 32
  config.eval.image_score = "max"  # reduction of the map to an image score: max | mean
  config.eval.save_arrays = False
  config.eval.num_overlays = 8

  if preset == "default":
    pass
  elif preset == "paper":
    config.data.image_size = 256
    config.model.channels = 256
    config.model.num_downsamplings = 3
    config.model.num_codes = 512
    config.model.embedding_dim = 256
    config.train.batch_size = 32
    config.train.num_steps = 20000
    config.train.log_every = 100
    config.train.checkpoint_every = 2000
    config.anomaly.am_dilation = 7
    config.eval.batch_size = 32
  elif preset == "smoke":
    config.data.image_size = 32
    config.model.channels = 16
    config.model.num_codes = 32
    config.model.embedding_dim = 8
    config.model.num_residual_layers = 1
    config.train.batch_size = 8
    config.train.num_steps = 6
    config.train.log_every = 2
    config.train.checkpoint_every = 3
    config.anomaly.ssim_window_size = 7
    config.anomaly.am_dilation = 3
    config.eval.batch_size = 8
    config.eval.num_overlays = 2
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/mvtec_vq.py; "
                     "expected one of: default, paper, smoke")
  return config
