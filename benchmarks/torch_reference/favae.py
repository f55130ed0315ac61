"""PyTorch twin of vqjax's FAVAE (Dehaene & Eline 2020), NCHW, written from Appendix D.

The encoder and decoder are nn.Sequentials with the printed module indices (encoder (0)..(25),
decoder (0) Unflatten ("DeFlatten") .. (27) Sigmoid), the adapters a ModuleList of
Conv1x1 -> ReLU -> Conv1x1, VGG16 torchvision's `features` layout (31 modules). The anomaly
map is written here again from §4 with torch ops (Normal.log_prob, F.interpolate), not
translated from vqjax: tests/test_torch_parity.py compares the two after
`convert.load_flax_variables` copied a Flax model in.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.torch_reference.vqvae import BN_EPS, BN_MOMENTUM

# torchvision vgg16 configuration "D" (conv channels; "M" = max-pool).
_VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
            512, 512, 512, "M")
VGG16_LAYERS = (7, 14, 21)  # conv2_2, conv3_3, conv4_3 before ReLU
DECODER_TAPS = (22, 16, 10)  # paired with VGG16_LAYERS by channel count and size
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features() -> nn.Sequential:
  layers, channels = [], 3
  for entry in _VGG16_D:
    if entry == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU(inplace=False)]
      channels = entry
  return nn.Sequential(*layers)


def _bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class FAVAE(nn.Module):
  def __init__(self, width: int = 128, bottleneck: int = 32, latent_dim: int = 100,
               bottom_size: int = 8, in_channels: int = 3,
               feature_channels: tuple[int, ...] = (128, 256, 512)):
    super().__init__()
    w = width
    enc = [(in_channels, w, 4, 2), (w, w, 4, 2), (w, 2 * w, 3, 1), (2 * w, 2 * w, 4, 2),
           (2 * w, 4 * w, 3, 1), (4 * w, 4 * w, 4, 2), (4 * w, 4 * w, 3, 1),
           (4 * w, bottleneck, 3, 1)]
    layers = []
    for cin, cout, k, s in enc:
      layers += [nn.Conv2d(cin, cout, k, s, padding=1), _bn(cout), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(bottleneck, 2 * latent_dim, bottom_size), nn.Flatten()]
    self.encoder = nn.Sequential(*layers)
    dec = [(bottleneck, 4 * w, 3, 1), (4 * w, 4 * w, 3, 1), (4 * w, 4 * w, 4, 2),
           (4 * w, 2 * w, 3, 1), (2 * w, 2 * w, 4, 2), (2 * w, w, 3, 1), (w, w, 4, 2)]
    layers = [nn.Unflatten(1, (latent_dim, 1, 1)),
              nn.ConvTranspose2d(latent_dim, bottleneck, bottom_size), _bn(bottleneck),
              nn.LeakyReLU(0.2)]
    for cin, cout, k, s in dec:
      layers += [nn.ConvTranspose2d(cin, cout, k, s, padding=1), _bn(cout), nn.LeakyReLU(0.2)]
    layers += [nn.ConvTranspose2d(w, in_channels, 4, 2, padding=1), nn.Identity(), nn.Sigmoid()]
    self.decoder = nn.Sequential(*layers)
    # Fed by the decoder taps (22, 16, 10), which have w, 2w, 4w channels (128, 256, 512 at
    # the paper's w: the printed Conv2d(128, 128) ...).
    self.adapters = nn.ModuleList(
        nn.Sequential(nn.Conv2d(tap, c, 1), nn.ReLU(), nn.Conv2d(c, c, 1))
        for tap, c in zip((w, 2 * w, 4 * w), feature_channels))
    self.log_var_pixels = nn.Parameter(torch.zeros(in_channels))
    self.log_var_features = nn.ParameterList(nn.Parameter(torch.zeros(c))
                                             for c in feature_channels)
    self.latent_dim = latent_dim

  def forward(self, images):
    """images [B,C,H,W] in [0,1] -> (pixel means [B,C,H,W], adapter outputs per feature
    space), decoding the posterior mean."""
    mean = self.encoder(images)[:, :self.latent_dim]
    h, taps = mean, {}
    for index, layer in enumerate(self.decoder):
      h = layer(h)
      taps[index] = h
    adapted = [adapter(taps[t]) for adapter, t in zip(self.adapters, DECODER_TAPS)]
    return h, adapted


def _nll_map(targets, means, log_var):
  """-log N summed over channels: [B,C,h,w] -> [B,h,w]."""
  std = torch.exp(0.5 * log_var)[None, :, None, None]
  # validate_args=False: the argument check is data-dependent (torch.export cannot trace it)
  return -torch.distributions.Normal(means, std, validate_args=False).log_prob(targets).sum(1)


def anomaly_maps(model: FAVAE, vgg: nn.Sequential, images, autocast_dtype=None
                 ) -> dict[str, torch.Tensor]:
  """images [B,C,H,W] in [0,1] (C = 1 or 3) -> {'favae', 'pixel_only'}: [B,H,W].

  autocast_dtype (e.g. torch.bfloat16): the two networks run under autocast (AMP); their
  outputs are cast to float32 before the log-densities, as vqjax's bf16 model does."""
  height, width = images.shape[-2:]
  rgb = images.expand(-1, 3, -1, -1)
  x = (rgb - torch.tensor(IMAGENET_MEAN, device=images.device)[None, :, None, None]) / (
      torch.tensor(IMAGENET_STD, device=images.device)[None, :, None, None])
  features = {}
  with torch.autocast(images.device.type, dtype=autocast_dtype or torch.bfloat16,
                      enabled=autocast_dtype is not None):
    pixels, adapted = model(images)
    for index, layer in enumerate(vgg[:max(VGG16_LAYERS) + 1]):
      x = layer(x)
      features[index] = x
  pixel = _nll_map(images, pixels.float(), model.log_var_pixels)
  total = pixel
  for predicted, layer, log_var in zip(adapted, VGG16_LAYERS, model.log_var_features):
    target = features[layer].float()
    predicted = F.interpolate(predicted.float(), size=target.shape[-2:], mode="bilinear",
                              align_corners=False)
    space = _nll_map(target, predicted, log_var)
    total = total + F.interpolate(space[:, None], size=(height, width), mode="bilinear",
                                  align_corners=False)[:, 0]
  return {"favae": total, "pixel_only": pixel}
