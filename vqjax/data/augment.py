"""On-device training augmentations (Wang et al. 2020 §4.3.1), jit-able, per image.

Policies: 'rot90_flip' (rotations by 0/90/180/270 degrees and flips: textures and the
rotation-invariant objects), 'small_rotation' (uniform within +-max_degrees, other objects),
'texture' (rot90_flip plus a random crop resized back), 'none'; 'auto' picks per MVTec
category as §4.3.1 does.
"""
from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

POLICIES = ("none", "auto", "rot90_flip", "small_rotation", "texture")
# §4.3.1. The demo categories (brick, grass, gravel) are textures too.
TEXTURE_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood", "brick", "grass", "gravel")
ROT90_CATEGORIES = ("bottle", "hazelnut", "metal_nut", "screw")


def resolve_policy(policy: str, category: str) -> str:
  """'auto' -> the §4.3.1 policy of an MVTec category; other policies pass through."""
  if policy != "auto":
    return policy
  if category in TEXTURE_CATEGORIES:
    return "texture"
  if category in ROT90_CATEGORIES:
    return "rot90_flip"
  return "small_rotation"


def _rot90_flip(image, rng):
  k_rng, lr_rng, ud_rng = jax.random.split(rng, 3)
  k = jax.random.randint(k_rng, (), 0, 4)
  image = jax.lax.switch(k, [lambda x, k=k: jnp.rot90(x, k, axes=(0, 1)) for k in range(4)], image)
  image = jnp.where(jax.random.bernoulli(lr_rng), image[:, ::-1], image)
  return jnp.where(jax.random.bernoulli(ud_rng), image[::-1], image)


def _small_rotation(image, rng, max_degrees: float):
  angle = jax.random.uniform(rng, (), minval=-max_degrees, maxval=max_degrees)
  return pix.rotate(image, jnp.deg2rad(angle), order=1, mode="nearest")


def _random_crop_resized(image, rng, crop_fraction: float):
  height, width, channels = image.shape
  crop = (max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction)), channels)
  return jax.image.resize(pix.random_crop(rng, image, crop), image.shape, method="bilinear")


def augment_images(images, rng, policy: str, *, max_degrees: float = 10.0,
                   crop_fraction: float = 0.875):
  """images [B,H,W,C] float (square) -> augmented [B,H,W,C], an independent draw per image."""
  if policy == "none":
    return images

  def one(image, key):
    first, second = jax.random.split(key)
    if policy == "small_rotation":
      return _small_rotation(image, first, max_degrees)
    image = _rot90_flip(image, first)
    if policy == "texture":
      image = _random_crop_resized(image, second, crop_fraction)
    return image

  if policy not in POLICIES or policy == "auto":
    raise ValueError(f"augmentation policy must be one of {POLICIES[:1] + POLICIES[2:]}, got {policy!r}")
  return jax.vmap(one)(images, jax.random.split(rng, images.shape[0]))
