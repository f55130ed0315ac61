"""PyTorch twin of vqjax's VQ-VAE SSIM training step (`VQVAESSIM.loss` + Adam), for benchmarks.

Loss (Gangloff et al. 2022 Eq. 4), as `vqjax.methods.vqvae_ssim.VQVAESSIM.loss`:
  mean over pixels of -log p(x | z_q) under a continuous-Bernoulli decoder (log-normaliser
  included) + mean (sg[z_e] - e)^2 + beta * mean (z_e - sg[e])^2, straight-through gradient
  to the encoder (the model's forward already writes z_e + sg(z_q - z_e)).
After the Adam step (lr 3e-4, torch's defaults otherwise = optax.adam's) the same codebook
bookkeeping as vqjax runs: the code-usage moving average, the candidate encoder outputs,
and the dead-code restart of `VQVAESSIM.post_update`.

With `autocast_dtype` (e.g. torch.bfloat16) the encoder and decoder convolutions run under
autocast, while the nearest-code search and the loss stay float32: the split vqjax's
`model.dtype = "bfloat16"` makes (see `mixed_forward`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from benchmarks.torch_reference.vqvae import VQVAE

_SERIES_CUTOFF = 0.1  # |eta| below which Taylor series are used, as in vqjax
USAGE_DECAY = 0.99  # per-step decay of the code-usage moving average, as in vqjax


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
  """log C(lam) for logits eta (any shape), C = eta / tanh(eta / 2); float32.

  The removable singularity at eta = 0 is handled with the series 2u coth u, u = eta/2,
  and a `where` on a safe argument, so gradients stay finite on both branches.
  """
  eta = logits.float()
  small = eta.abs() < _SERIES_CUTOFF
  abs_safe = torch.where(small, torch.ones_like(eta), eta).abs()
  exact = abs_safe.log() - (-torch.expm1(-abs_safe)).log() + torch.log1p(torch.exp(-abs_safe))
  u2 = (torch.where(small, eta, torch.zeros_like(eta)) / 2) ** 2
  series = math.log(2.0) + torch.log1p(u2 / 3 - u2**2 / 45 + 2 * u2**3 / 945)
  return torch.where(small, series, exact)


def continuous_bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
  """Elementwise log-density of x in [0,1] under CB(sigmoid(logits)); float32."""
  eta = logits.float()
  return x * eta - torch.nn.functional.softplus(eta) + continuous_bernoulli_log_normalizer(eta)


def mixed_forward(model: VQVAE, images: torch.Tensor, autocast_dtype: torch.dtype | None):
  """model(images) with the encoder and decoder under autocast, the quantiser in float32.

  Plain autocast around the whole model would also run the nearest-code matmul in bf16 and
  change which code wins; vqjax keeps z_e, the codebook and that search in float32.
  """
  if autocast_dtype is None:
    return model(images)
  device_type = images.device.type
  with torch.autocast(device_type, dtype=autocast_dtype):
    z_e = model.encoder(images).float()
  indices, z_q, alignment = model.quantize(z_e)
  z_st = z_e + (z_q - z_e).detach()  # straight-through, as the model's forward
  with torch.autocast(device_type, dtype=autocast_dtype):
    logits = model.decoder(z_st).float()
  return logits, dict(z_e=z_e, z_q=z_q, indices=indices, alignment=alignment)


def vqvae_ssim_loss(model: VQVAE, images: torch.Tensor, beta: float,
                    autocast_dtype: torch.dtype | None = None):
  """images [B,C,H,W] float in [0,1] -> (loss scalar, aux of the forward pass).

  The model must be in train mode (BatchNorm on batch statistics), as vqjax's loss.
  """
  logits, aux = mixed_forward(model, images, autocast_dtype)
  nll = -continuous_bernoulli_log_prob(images, logits).mean()
  z_e, z_q = aux["z_e"], aux["z_q"]
  codebook_loss = (z_e.detach() - z_q).pow(2).mean()
  commitment_loss = (z_e - z_q.detach()).pow(2).mean()
  return nll + codebook_loss + beta * commitment_loss, aux


class CodebookStats:
  """vqjax's `vq_stats`: usage moving average [K] and candidate encoder outputs [K,D]."""

  def __init__(self, num_codes: int, embedding_dim: int, device):
    self.usage = torch.full((num_codes,), 1.0 / num_codes, device=device)
    self.candidates = torch.zeros((num_codes, embedding_dim), device=device)

  @torch.no_grad()
  def update(self, indices: torch.Tensor, z_e: torch.Tensor):
    """Decays usage towards this batch's code counts; keeps K random encoder outputs."""
    k = self.usage.shape[0]
    counts = torch.bincount(indices.reshape(-1), minlength=k).float()
    self.usage = USAGE_DECAY * self.usage + (1 - USAGE_DECAY) * counts / counts.sum()
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    picks = torch.randint(0, flat.shape[0], (k,), device=flat.device)
    self.candidates = flat[picks].float()

  @torch.no_grad()
  def restart_dead_codes(self, codebook: torch.Tensor, threshold: float):
    """Moves codes with usage < threshold / K onto candidates (`VQVAESSIM.post_update`)."""
    if threshold <= 0:
      return
    k = self.usage.shape[0]
    dead = self.usage < threshold / k
    codebook.copy_(torch.where(dead[:, None], self.candidates, codebook))
    self.usage = torch.where(dead, torch.full_like(self.usage, 1.0 / k), self.usage)


def make_train_step(model: VQVAE, *, beta: float, learning_rate: float = 3e-4,
                    dead_code_threshold: float = 0.0,
                    autocast_dtype: torch.dtype | None = None) -> Callable:
  """Returns step(images_u8 [B,C,H,W] uint8) -> loss tensor (not synchronised).

  One step: uint8 -> [0,1] float, loss, backward, Adam update, codebook bookkeeping; the
  work of vqjax's jitted `train_step` (which also computes three global norms for its log).
  """
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
  stats = CodebookStats(model.codebook.num_embeddings, model.codebook.embedding_dim,
                        model.codebook.weight.device)

  def step(images_u8: torch.Tensor) -> torch.Tensor:
    images = images_u8.float() / 255.0
    optimizer.zero_grad(set_to_none=True)
    loss, aux = vqvae_ssim_loss(model, images, beta, autocast_dtype)
    loss.backward()
    optimizer.step()
    stats.update(aux["indices"], aux["z_e"])
    stats.restart_dead_codes(model.codebook.weight, dead_code_threshold)
    return loss.detach()

  step.optimizer = optimizer
  step.stats = stats
  return step
