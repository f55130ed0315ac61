"""VGG16's convolutional part, index for index as torchvision's `vgg16().features`.

torchvision's Sequential holds 31 layers: each of the 13 convs (3x3, pad 1) is followed by a
ReLU, and 2x2 stride-2 max-pools sit at indices 4, 9, 16, 23 and 30. An output index names the
activation right after that layer, so 7 is conv2_2 before its ReLU and 8 the same after it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vqjax.ops.small_conv import small_map_conv

Dtype = Any

# torchvision's configuration "D": conv output channels, "M" = max-pool.
_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
           512, 512, 512, "M")


def _features_layout() -> tuple[tuple[str, int], ...]:
  """One (kind, channels) per torchvision `features` index; kind in conv / relu / pool."""
  layers = []
  for entry in _CONFIG:
    layers += [("pool", 0)] if entry == "M" else [("conv", entry), ("relu", entry)]
  return tuple(layers)


FEATURES = _features_layout()
NUM_FEATURES = len(FEATURES)  # 31
# torchvision `features` index of conv k (Conv_k here), and its (in, out) channels.
CONV_INDICES = tuple(i for i, (kind, _) in enumerate(FEATURES) if kind == "conv")
CONV_CHANNELS = tuple(zip((3,) + tuple(FEATURES[i][1] for i in CONV_INDICES[:-1]),
                          (FEATURES[i][1] for i in CONV_INDICES)))


class VGG16(nn.Module):
  """Frozen VGG16 feature extractor; convs named Conv_0 .. Conv_12 (Flax HWIO kernels).

  Only the layers up to the deepest requested index are built and run, so a module asking for
  index 8 has Conv_0 .. Conv_3; a full 13-conv params tree still applies (extras are unused).
  """
  outputs: tuple[int, ...]  # indices into torchvision's vgg16().features, 0 .. 30
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x [B,H,W,3] float, ImageNet-normalised -> {index: features [B,h,w,C] in dtype}."""
    bad = [i for i in self.outputs if not 0 <= i < NUM_FEATURES]
    if not self.outputs or bad:
      raise ValueError(f"VGG16.outputs must be non-empty indices in [0, {NUM_FEATURES}), "
                       f"got {self.outputs}")
    features = {}
    h = x.astype(self.dtype)
    for index, (kind, channels) in enumerate(FEATURES[:max(self.outputs) + 1]):
      if kind == "conv":
        h = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=self.param_dtype, conv_general_dilated=small_map_conv,
                    name=f"Conv_{CONV_INDICES.index(index)}")(h)
      elif kind == "relu":
        h = nn.relu(h)
      else:
        # Odd sizes are floored, as torchvision's MaxPool2d(2, 2) does.
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      if index in self.outputs:
        features[index] = h
    return features
