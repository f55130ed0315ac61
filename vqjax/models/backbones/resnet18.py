"""ResNet18 in torchvision's layout, as a frozen feature extractor (BatchNorm in inference mode).

Stem: conv1 7x7 s2 p3 -> bn1 -> ReLU -> max-pool 3x3 s2 p1; then layer1 .. layer4 of two
BasicBlocks each (the first block of layer2 .. layer4 strides by 2 and has a 1x1 stride-2
conv + BN shortcut, torchvision's `downsample`); then a global average pool. Submodules carry
torchvision's names with "." -> "_" (layer2_0/downsample_0), so state-dict keys map one to one.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vqjax.ops.small_conv import small_map_conv

Dtype = Any

OUTPUTS = ("conv1", "layer1", "layer2", "layer3", "layer4", "avgpool")
# (channels, stride of the first block) of layer1 .. layer4; two BasicBlocks each.
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
BLOCKS_PER_STAGE = 2


def _conv(features: int, kernel: int, stride: int, module: nn.Module, name: str) -> nn.Conv:
  # PyTorch pads symmetrically (k // 2 each side); 'SAME' would pad stride-2 convs unevenly.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=module.dtype,
                 param_dtype=module.param_dtype, conv_general_dilated=small_map_conv, name=name)


def _batch_norm(module: nn.Module, name: str) -> nn.BatchNorm:
  # Frozen: always the running statistics; float32 whatever the compute dtype.
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=jnp.float32,
                      param_dtype=module.param_dtype, name=name)


class BasicBlock(nn.Module):
  """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), torchvision's BasicBlock."""
  features: int
  stride: int
  downsample: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [B,H,W,C] -> [B,H/stride,W/stride,features] in dtype."""
    h = _conv(self.features, 3, self.stride, self, "conv1")(x)
    h = nn.relu(_batch_norm(self, "bn1")(h)).astype(self.dtype)
    h = _conv(self.features, 3, 1, self, "conv2")(h)
    h = _batch_norm(self, "bn2")(h)
    if self.downsample:
      x = _batch_norm(self, "downsample_1")(_conv(self.features, 1, self.stride, self,
                                                  "downsample_0")(x))
    return nn.relu(h + x).astype(self.dtype)


class ResNet18(nn.Module):
  """Frozen ResNet18 feature extractor; builds and runs only up to the deepest output.

  'conv1' is the stem's activation relu(bn1(conv1(x))) before the max-pool ([B,H/2,W/2,64]);
  'layerN' the output of that stage; 'avgpool' the global mean [B,1,1,512].
  """
  outputs: tuple[str, ...]  # names from OUTPUTS
  dtype: Dtype = jnp.float32  # compute dtype of the convs; BatchNorm stays float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [B,H,W,3] float, ImageNet-normalised -> {name: features [B,h,w,C] in dtype}."""
    bad = [name for name in self.outputs if name not in OUTPUTS]
    if not self.outputs or bad:
      raise ValueError(f"ResNet18.outputs must be non-empty names from {OUTPUTS}, "
                       f"got {self.outputs}")
    last = max(OUTPUTS.index(name) for name in self.outputs)
    h = _conv(64, 7, 2, self, "conv1")(x.astype(self.dtype))
    h = nn.relu(_batch_norm(self, "bn1")(h)).astype(self.dtype)
    features = {"conv1": h}
    # Flax pads a max-pool with -inf, as PyTorch does.
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    in_channels = 64
    for stage, (channels, stride) in enumerate(STAGES[:last], start=1):
      for block in range(BLOCKS_PER_STAGE):
        block_stride = stride if block == 0 else 1
        h = BasicBlock(channels, block_stride,
                       downsample=block_stride != 1 or in_channels != channels,
                       dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"layer{stage}_{block}")(h)
        in_channels = channels
      features[f"layer{stage}"] = h
    if last == OUTPUTS.index("avgpool"):
      features["avgpool"] = jnp.mean(h, axis=(1, 2), keepdims=True)
    return {name: features[name] for name in self.outputs}
