"""PyTorch twin of Wang et al.'s latent resampling as vqjax computes it, for the deploy rows.

- `PixelSNAIL`: `vqjax.models.pixelsnail.PixelSNAIL` in inference mode (dropout off), built
  from vqjax's parameter tree with the weight normalisation folded into the kernels (what a
  deployment does once; `torch.nn.utils.remove_weight_norm` alike). Same windows, gathers and
  causal attention, NCHW.
- `resample`: Eq. 5's raster walk in the exact fast scheme of `vqjax.ops.latent_resampling`
  (one change per pass, a cursor per image), written as a PyTorch user would: a Python loop
  around the prior's forward pass.
- `anomaly_maps`: encode -> indices -> walk -> decode both tables -> per-pixel L2 distance in
  0..255 units -> the bilateral filter (OpenCV's definition, as `vqjax.ops.bilateral`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

WEIGHT_NORM_EPS = 1e-12  # flax nn.WeightNorm's and CodeConv's


def _window_padding(rows, cols):
  (r0, r1), (c0, c1) = rows, cols
  return (-r0, max(r1, 0)), (-c0, max(c1, 0))


def _normalised(kernel: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """kernel * scale / ||kernel|| over every axis but the last (the output features)."""
  axes = tuple(range(kernel.ndim - 1))
  norm = np.sqrt(np.sum(kernel * kernel, axis=axes, keepdims=True) + WEIGHT_NORM_EPS)
  return (kernel / norm * scale).astype(np.float32)


def fold_weight_norm(params) -> dict:
  """vqjax PixelSNAIL params (nested dicts of arrays) -> the same tree with each weight-normed
  kernel replaced by its effective kernel and the scales dropped."""
  node = {k: (fold_weight_norm(v) if isinstance(v, dict) else np.asarray(v, np.float32))
          for k, v in params.items() if not k.startswith("WeightNorm_")}
  for key, value in params.items():
    if key.startswith("WeightNorm_"):
      for path, scale in value.items():  # "<layer>/kernel/scale"
        layer = path.split("/")[0]
        node[layer]["kernel"] = _normalised(node[layer]["kernel"], np.asarray(scale, np.float32))
  if "scale" in node and "kernel" in node:  # CodeConv normalises its own kernel
    node["kernel"] = _normalised(node.pop("kernel"), node.pop("scale"))
  return node


class PixelSNAIL(torch.nn.Module):
  """tables [B,H,W] int64 -> logits [B,H,W,K] float32 (p(z_ij | z_<ij) in raster order)."""

  def __init__(self, params, *, num_codes: int, channels: int, num_blocks: int,
               num_res_blocks: int, num_heads: int, kernel_size: int):
    super().__init__()
    self.num_codes, self.channels, self.num_blocks = num_codes, channels, num_blocks
    self.num_res_blocks, self.num_heads, self.kernel_size = num_res_blocks, num_heads, kernel_size
    self._names = {}
    def register(prefix, node):
      for key, value in node.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
          register(path, value)
        else:
          name = path.replace("/", "__")
          self.register_buffer(name, torch.from_numpy(np.array(value, np.float32)))
          self._names[path] = name
    register("", fold_weight_norm(params))

  @classmethod
  def from_config(cls, prior_cfg, num_codes: int, params) -> "PixelSNAIL":
    return cls(params, num_codes=num_codes, channels=prior_cfg.channels,
               num_blocks=prior_cfg.num_blocks, num_res_blocks=prior_cfg.num_res_blocks,
               num_heads=prior_cfg.num_heads, kernel_size=prior_cfg.kernel_size)

  def _w(self, path: str) -> torch.Tensor:
    return getattr(self, self._names[path])

  def _has(self, path: str) -> bool:
    return path in self._names

  def _shifted_conv(self, x, prefix, rows, cols):
    height, width = x.shape[2], x.shape[3]
    (top, bottom), (left, right) = _window_padding(rows, cols)
    kernel = self._w(f"{prefix}/Conv_0/kernel").permute(3, 2, 0, 1)  # HWIO -> OIHW
    bias = self._w(f"{prefix}/Conv_0/bias") if self._has(f"{prefix}/Conv_0/bias") else None
    out = F.conv2d(F.pad(x, (left, right, top, bottom)), kernel, bias)
    return out[:, :, :height, :width]

  def _code_conv(self, codes, prefix, rows, cols):
    (r0, r1), (c0, c1) = rows, cols
    height, width = codes.shape[1], codes.shape[2]
    (top, bottom), (left, right) = _window_padding(rows, cols)
    padded = F.pad(codes, (left, right, top, bottom), value=self.num_codes)  # sentinel code
    kernel = self._w(f"{prefix}/kernel")
    table = F.pad(kernel, (0, 0, 0, 1))  # a zero row for the sentinel
    out = self._w(f"{prefix}/bias")
    for a in range(r1 - r0 + 1):
      for c in range(c1 - c0 + 1):
        out = out + F.embedding(padded[:, a:a + height, c:c + width], table[a, c])
    return out.permute(0, 3, 1, 2)

  def _causal_conv(self, x, prefix, kernel_size):
    k, half = kernel_size, kernel_size // 2
    if k == 1:
      return self._shifted_conv(x, f"{prefix}/ShiftedConv_0", (0, 0), (0, 0))
    return (self._shifted_conv(x, f"{prefix}/ShiftedConv_0", (-(k - 1), -1), (-half, half))
            + self._shifted_conv(x, f"{prefix}/ShiftedConv_1", (0, 0), (-half, 0)))

  def _gated(self, x, prefix, kernel_size, aux=None):
    h = self._causal_conv(F.elu(x), f"{prefix}/CausalConv_0", kernel_size)
    last = 1
    if aux is not None:
      h = h + self._causal_conv(F.elu(aux), f"{prefix}/CausalConv_1", 1)
      last = 2
    value, gate = torch.chunk(self._causal_conv(F.elu(h), f"{prefix}/CausalConv_{last}",
                                                kernel_size), 2, dim=1)
    return x + value * torch.sigmoid(gate)

  def _attention(self, query, key, prefix):
    batch, _, height, width = query.shape
    n = height * width
    features = self.channels // 2
    head_dim = features // self.num_heads

    def project(x, name):
      flat = x.permute(0, 2, 3, 1).reshape(batch, n, -1)
      y = flat @ self._w(f"{prefix}/{name}/kernel") + self._w(f"{prefix}/{name}/bias")
      return y.reshape(batch, n, self.num_heads, head_dim)

    q, k, v = project(query, "query"), project(key, "key"), project(key, "value")
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    allowed = torch.tril(torch.ones((n, n), dtype=torch.bool, device=query.device), -1)
    probs = torch.softmax(scores.masked_fill(~allowed, -1e9), dim=-1)
    probs = probs.masked_fill(~allowed, 0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, height, width, features)
    return out.permute(0, 3, 1, 2)

  def _pixel_block(self, x, background, prefix):
    n = self.num_res_blocks
    out = x
    for r in range(n):
      out = self._gated(out, f"{prefix}/GatedResBlock_{r}", self.kernel_size)
    key = self._gated(torch.cat([x, out, background], 1), f"{prefix}/GatedResBlock_{n}", 1)
    query = self._gated(torch.cat([out, background], 1), f"{prefix}/GatedResBlock_{n + 1}", 1)
    attended = self._attention(query, key, f"{prefix}/CausalAttention_0")
    return self._gated(out, f"{prefix}/GatedResBlock_{n + 2}", 1, aux=attended)

  def forward(self, tables):
    batch, height, width = tables.shape
    rows = (torch.arange(height, dtype=torch.float32) - height / 2) / height
    cols = (torch.arange(width, dtype=torch.float32) - width / 2) / width
    background = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), 0)
    background = background[None].expand(batch, 2, height, width).to(tables.device)
    k, half = self.kernel_size, self.kernel_size // 2
    out = (self._code_conv(tables, "CodeConv_0", (-half, -1), (-half, half))
           + self._code_conv(tables, "CodeConv_1", (-((k + 1) // 2 - 1), 0), (-half, -1)))
    for i in range(self.num_blocks):
      out = self._pixel_block(out, background, f"PixelBlock_{i}")
    logits = self._shifted_conv(F.elu(out), "ShiftedConv_0", (0, 0), (0, 0))
    return logits.permute(0, 2, 3, 1)


def neighbour_min(probs: torch.Tensor) -> torch.Tensor:
  """I(m, n) of Eq. 5: min over (m,n+1), (m+1,n-1), (m+1,n), (m+1,n+1); 0 where none exist."""
  height, width = probs.shape[1:]
  padded = F.pad(probs, (1, 1, 0, 1), value=math.inf)
  lowest = torch.minimum(
      torch.minimum(padded[:, :height, 2:width + 2], padded[:, 1:height + 1, 0:width]),
      torch.minimum(padded[:, 1:height + 1, 1:width + 1], padded[:, 1:height + 1, 2:width + 2]))
  return torch.where(torch.isinf(lowest), torch.zeros_like(lowest), lowest)


def resample(prior, tables: torch.Tensor, eta: float, *, local_constraint: bool = True,
             interior_only: bool = False) -> torch.Tensor:
  """Eq. 5 with the original table's constraint, the exact scheme of vqjax's `resample`: each
  pass runs `prior` on every current table and applies, per image, the first change at or
  after its cursor; an image is done when a pass finds none (finished images stay in the
  batch, as vqjax's default: every pass has the same shapes). tables [N,H,W] int64 ->
  resampled tables. `prior` is any callable tables -> logits [N,H,W,K] (a module, a compiled
  module, an ONNX session)."""
  tables = tables.clone()
  num_images, height, width = tables.shape
  size = height * width
  positions = torch.arange(size)
  cursor = torch.zeros(num_images, dtype=torch.long)
  active = torch.ones(num_images, dtype=torch.bool)
  interior = torch.zeros((height, width), dtype=torch.bool)
  interior[1:-1, 1:-1] = True
  original_constraint = None
  while bool(active.any()):
    log_probs = torch.log_softmax(prior(tables), dim=-1)
    probs = torch.exp(torch.gather(log_probs, -1, tables[..., None]))[..., 0]
    best = torch.argmax(log_probs, dim=-1)
    if original_constraint is None:  # the first pass sees the original tables
      original_constraint = neighbour_min(probs)
    changes = probs < eta
    if local_constraint:
      changes = changes & (original_constraint < eta)
    changes = changes & (best != tables)
    if interior_only:
      changes = changes & interior
    changes = changes.reshape(num_images, size) & (positions[None] >= cursor[:, None])
    found = changes.any(-1) & active
    first = torch.argmax(changes.to(torch.int8), -1)
    rows = torch.nonzero(found)[:, 0]
    flat = tables.view(num_images, size)
    flat[rows, first[rows]] = best.reshape(num_images, size)[rows, first[rows]]
    cursor[rows] = first[rows] + 1
    active = found & (cursor < size)
  return tables


def bilateral_filter(maps: torch.Tensor, *, diameter: int, sigma_color: float,
                     sigma_space: float) -> torch.Tensor:
  """OpenCV's bilateralFilter for float maps [B,H,W] (exact colour weights, reflect-101)."""
  sigma_color = sigma_color if sigma_color > 0 else 1.0
  sigma_space = sigma_space if sigma_space > 0 else 1.0
  radius = max(diameter // 2 if diameter > 0 else round(sigma_space * 1.5), 1)
  height, width = maps.shape[1:]
  padded = F.pad(maps[:, None], (radius,) * 4, mode="reflect")[:, 0]
  weighted, total = torch.zeros_like(maps), torch.zeros_like(maps)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      squared = dy * dy + dx * dx
      if math.sqrt(squared) > radius:
        continue
      spatial = math.exp(-squared / (2.0 * sigma_space * sigma_space))
      diff = padded[:, radius + dy:radius + dy + height, radius + dx:radius + dx + width] - maps
      weight = spatial * torch.exp(-0.5 / (sigma_color * sigma_color) * diff * diff)
      weighted, total = weighted + weight * diff, total + weight
  return maps + weighted / total


def decode_indices(vqvae, indices: torch.Tensor) -> torch.Tensor:
  """The MSE-trained VQ-VAE's reconstruction of an index table [B,h,w] -> [B,C,H,W]."""
  z_q = F.embedding(indices, vqvae.codebook.weight).permute(0, 3, 1, 2)
  return vqvae.decoder(z_q)


def encode(vqvae, images) -> tuple[torch.Tensor, torch.Tensor]:
  """images [B,C,H,W] in [0,1] -> (index tables [B,h,w], their direct reconstruction)."""
  indices = vqvae.quantize(vqvae.encoder(images))[0]
  return indices, decode_indices(vqvae, indices)


def residual_map(vqvae, restored, direct, anomaly_cfg) -> torch.Tensor:
  """Eq. 6: the per-pixel L2 distance (0..255 units) between the resampled tables' decoding
  and the direct reconstruction, bilateral-filtered -> [B,H,W]."""
  distance = torch.sqrt(torch.sum((decode_indices(vqvae, restored) - direct) ** 2, 1)) * 255.0
  return bilateral_filter(distance, diameter=anomaly_cfg.bilateral_diameter,
                          sigma_color=anomaly_cfg.bilateral_sigma_color,
                          sigma_space=anomaly_cfg.bilateral_sigma_space)


def anomaly_maps(vqvae, prior, images, anomaly_cfg, eta: float) -> dict:
  """images [B,C,H,W] in [0,1] -> {'resample': [B,H,W]}."""
  indices, direct = encode(vqvae, images)
  restored = resample(prior, indices, eta, local_constraint=anomaly_cfg.local_constraint,
                      interior_only=anomaly_cfg.interior_only)
  return {"resample": residual_map(vqvae, restored, direct, anomaly_cfg)}
