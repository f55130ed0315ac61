"""The VAE of FAVAE (Dehaene & Eline 2020, Appendix D), layer for layer as printed there.

Layers are named by their index in the paper's printed PyTorch Sequentials, so
`encoder_conv_9` is encoder module (9) and `decoder_convt_22` decoder module (22):

encoder  (0) Conv k4 s2 w, (3) Conv k4 s2 w, (6) Conv k3 s1 2w, (9) Conv k4 s2 2w,
         (12) Conv k3 s1 4w, (15) Conv k4 s2 4w, (18) Conv k3 s1 4w, (21) Conv k3 s1 bottleneck,
         each followed by BatchNorm and LeakyReLU(0.2); (24) Conv k(H/16) valid -> 2 x latent
         (the mean and the log-variance of q(z|x): the paper says "mean and sigma"; a
         log-variance is the decision, it needs no positivity constraint).
decoder  (1) ConvT k(H/16) valid latent -> bottleneck, (4) ConvT k3 4w, (7) ConvT k3 4w,
         (10) ConvT k4 s2 4w, (13) ConvT k3 2w, (16) ConvT k4 s2 2w, (19) ConvT k3 w,
         (22) ConvT k4 s2 w, each followed by BatchNorm and LeakyReLU(0.2); (25) ConvT k4 s2
         -> image channels, sigmoid (the mean of the pixel Gaussian).
The paper's w = 128, bottleneck 32, latent 100 at 128x128 (where H/16 = 8, its k8 convs).

Feature adapters (Appendix D): for each modelled feature space, Conv1x1 -> ReLU -> Conv1x1
with hidden = output = the feature's channels, fed by a decoder tap: the ConvT output before
its BatchNorm. `DECODER_TAPS` pairs the taps with the feature spaces by channel count (see
vqjax/methods/favae.py for the mapping to VGG16 layers). The model also returns the encoder's
conv outputs `ENCODER_TAPS` (before BatchNorm): Table 2's "auto feature extractor" (3, 9, 15).

Learned per-channel variances (Eq. 8, the decoder variance of Dai & Wipf as a parameter):
`log_var_pixels` [C] and `log_var_features_<i>` [C_i], initialised at 0 (variance 1).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.models.vqvae import batch_norm

Dtype = Any

# (index in the printed Sequential, kernel, stride, width multiplier; 0 = the bottleneck).
ENCODER_LAYERS = ((0, 4, 2, 1), (3, 4, 2, 1), (6, 3, 1, 2), (9, 4, 2, 2), (12, 3, 1, 4),
                  (15, 4, 2, 4), (18, 3, 1, 4), (21, 3, 1, 0))
DECODER_LAYERS = ((4, 3, 1, 4), (7, 3, 1, 4), (10, 4, 2, 4), (13, 3, 1, 2), (16, 4, 2, 2),
                  (19, 3, 1, 1), (22, 4, 2, 1))
DOWNSAMPLING = 16  # four stride-2 convs
# Decoder taps -> feature spaces, shallow to deep: 64, 32, 16 px at 128 (w, 2w, 4w channels).
DECODER_TAPS = (22, 16, 10)
# The encoder's own features (Table 2 "auto feature extractor"): 32, 16, 8 px at 128.
ENCODER_TAPS = (3, 9, 15)


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.2)


# torch Conv2d padding 1, as printed for both the k4 s2 and the k3 s1 layers.
_CONV_PADDING = ((1, 1), (1, 1))


def _transposed_padding(kernel: int):
  # torch ConvTranspose2d(k, p=1) == lax transposed conv with padding k - 1 - p and a flipped
  # kernel (transpose_kernel=True), as in vqjax/models/vqvae.py.
  return ((kernel - 2, kernel - 2), (kernel - 2, kernel - 2))


class FAVAE(nn.Module):
  """images [B,H,W,C] in [0,1] -> dict (see __call__); H, W multiples of 16."""
  width: int = 128
  bottleneck: int = 32
  latent_dim: int = 100
  bottom_size: int = 8             # H / 16: kernel of the last encoder / first decoder conv
  out_channels: int = 3
  feature_channels: tuple[int, ...] = (128, 256, 512)  # one adapter per entry; () = none
  dtype: Dtype = jnp.float32       # compute dtype of the convs; BatchNorm stays float32

  def _channels(self, multiplier: int) -> int:
    return self.bottleneck if multiplier == 0 else self.width * multiplier

  def _encode(self, images, train: bool):
    """-> (mean [B,latent], log_var [B,latent], {encoder tap: [B,h,w,C] float32})."""
    h = images.astype(self.dtype)
    taps = {}
    for index, kernel, stride, mult in ENCODER_LAYERS:
      h = nn.Conv(self._channels(mult), (kernel, kernel), strides=(stride, stride),
                  padding=_CONV_PADDING, dtype=self.dtype, name=f"encoder_conv_{index}")(h)
      if index in ENCODER_TAPS:
        taps[index] = h.astype(jnp.float32)
      h = leaky_relu(batch_norm(train, name=f"encoder_bn_{index + 1}")(h)).astype(self.dtype)
    if h.shape[1:3] != (self.bottom_size, self.bottom_size):
      raise ValueError(f"FAVAE.bottom_size = {self.bottom_size} but the encoder reaches "
                       f"{h.shape[1:3]}: images must be {self.bottom_size * DOWNSAMPLING} px")
    h = nn.Conv(2 * self.latent_dim, (self.bottom_size, self.bottom_size), padding="VALID",
                dtype=self.dtype, name="encoder_conv_24")(h)
    h = h.reshape(h.shape[0], -1).astype(jnp.float32)
    return h[:, :self.latent_dim], h[:, self.latent_dim:], taps

  def _decode(self, z, train: bool):
    """z [B,latent] -> (pixel means [B,H,W,C] float32 in (0,1), adapter outputs: one
    [B,h,w,C_i] float32 per feature_channels entry, at its decoder tap's size)."""
    h = z.astype(self.dtype)[:, None, None, :]
    k = self.bottom_size
    h = nn.ConvTranspose(self.bottleneck, (k, k), padding=((k - 1, k - 1), (k - 1, k - 1)),
                         transpose_kernel=True, dtype=self.dtype, name="decoder_convt_1")(h)
    h = leaky_relu(batch_norm(train, name="decoder_bn_2")(h)).astype(self.dtype)
    taps = {}
    for index, kernel, stride, mult in DECODER_LAYERS:
      h = nn.ConvTranspose(self._channels(mult), (kernel, kernel), strides=(stride, stride),
                           padding=_transposed_padding(kernel), transpose_kernel=True,
                           dtype=self.dtype, name=f"decoder_convt_{index}")(h)
      taps[index] = h
      h = leaky_relu(batch_norm(train, name=f"decoder_bn_{index + 1}")(h)).astype(self.dtype)
    h = nn.ConvTranspose(self.out_channels, (4, 4), strides=(2, 2), padding=_transposed_padding(4),
                         transpose_kernel=True, dtype=self.dtype, name="decoder_convt_25")(h)
    pixels = jax.nn.sigmoid(h.astype(jnp.float32))
    adapted = []
    for i, channels in enumerate(self.feature_channels):
      a = nn.Conv(channels, (1, 1), dtype=self.dtype, name=f"adapter_{i}_0")(taps[DECODER_TAPS[i]])
      a = nn.Conv(channels, (1, 1), dtype=self.dtype, name=f"adapter_{i}_2")(nn.relu(a))
      adapted.append(a.astype(jnp.float32))
    return pixels, adapted

  @nn.compact
  def __call__(self, images, rng=None, *, train: bool = False):
    """-> dict(mean, log_var [B,latent]; z [B,latent] (a posterior sample when rng is given,
    else the mean); pixels [B,H,W,C]; adapted [list of [B,h,w,C_i]]; encoder_features
    {tap: [B,h,w,C]}; log_var_pixels [C]; log_var_features [list of [C_i]])."""
    if len(self.feature_channels) > len(DECODER_TAPS):
      raise ValueError(f"at most {len(DECODER_TAPS)} feature spaces, got {self.feature_channels}")
    mean, log_var, encoder_features = self._encode(images, train)
    z = mean
    if rng is not None:
      z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)
    pixels, adapted = self._decode(z, train)
    zeros = nn.initializers.zeros
    return dict(
        mean=mean, log_var=log_var, z=z, pixels=pixels, adapted=adapted,
        encoder_features=encoder_features,
        log_var_pixels=self.param("log_var_pixels", zeros, (self.out_channels,)),
        log_var_features=[self.param(f"log_var_features_{i}", zeros, (c,))
                          for i, c in enumerate(self.feature_channels)])
