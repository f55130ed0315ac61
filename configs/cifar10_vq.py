"""VQ-VAE SSIM / SSIM+AM, CIFAR-10 one-vs-rest (Gangloff et al. 2022 §III-D, Table III).

32x32 RGB, 2 downsamplings -> 8x8 latent; image score = mean of the map. Train on one class,
test on the whole test set (the other nine classes are anomalies). Data from a local folder
with the CIFAR-10 python files (cifar-10-batches-py/) or a prepared tensorflow-datasets dir:
  python -m vqjax.main --config configs/cifar10_vq.py --config.data.root=/data/cifar10 \
      --config.data.category=airplane
All ten classes, then results.md / results.csv with the mean row beside Table III:
  python -m vqjax.main --config configs/cifar10_vq.py --config.data.root=/data/cifar10 \
      --config.data.category=all
The same machinery serves MNIST and Fashion-MNIST: --config.data.dataset=mnist (image_size 28).
Smoke preset used by the tests: configs/cifar10_vq.py:smoke
"""
from __future__ import annotations

import ml_collections

from vqjax.config_defaults import apply_paper_model, apply_smoke_preset, vqvae_ssim_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  config = vqvae_ssim_config()
  config.data.dataset = "cifar10"
  config.data.category = "airplane"
  config.data.image_size = 32
  apply_paper_model(config, num_downsamplings=2)
  config.train.batch_size = 64
  # ~142 epochs of the 4500 training images of a class (the paper gives no length).
  config.train.num_steps = 10000
  config.anomaly.ssim_window_size = 7  # an 11-px window is a third of a 32-px image
  config.anomaly.am_dilation = 3
  config.eval.image_score = "mean"  # §III-D: average of the pixel-wise map
  config.eval.batch_size = 256
  config.eval.num_overlays = 8
  config.eval.min_defect_area = 4
  if preset == "default":
    pass
  elif preset == "smoke":
    apply_smoke_preset(config)
  else:
    raise ValueError(f"unknown preset {preset!r} for configs/cifar10_vq.py; "
                     "expected default or smoke")
  return config
