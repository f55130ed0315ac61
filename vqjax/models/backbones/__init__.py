"""Frozen ImageNet feature extractors in torchvision's layouts, and their input normalisation.

Weights are loaded on the host by `vqjax.pretrained`; these modules only compute.
"""
import jax.numpy as jnp

# torchvision's ImageNet channel statistics (RGB), which its pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images):
  """images [..., 3] float in [0,1] (RGB) -> (images - mean) / std, same shape.

  A single grey channel [..., 1] broadcasts to [..., 3]: the grey image read as RGB.
  """
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  return (images - mean) / std


# Imported after the helper so the submodules may use it without a cycle.
from vqjax.models.backbones.resnet18 import ResNet18  # noqa: E402
from vqjax.models.backbones.vgg16 import VGG16  # noqa: E402

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ResNet18", "VGG16", "imagenet_normalize"]
