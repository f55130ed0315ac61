"""On-device training augmentations (Wang et al. 2020 §4.3.1), jit-able, per image.

Policies: 'rot90_flip' (rotations by 0/90/180/270 degrees and flips: textures and the
rotation-invariant objects), 'small_rotation' (uniform within +-max_degrees, other objects),
'texture' (rot90_flip plus a random crop resized back), 'rotation_translation' (a rotation
within +-max_degrees, then a shift within +-max_translation of the size: FAVAE's objects,
Dehaene & Eline §5.1), 'none'; 'auto' picks per MVTec category as Wang et al. §4.3.1 does,
'auto_favae' as Dehaene & Eline §5.1 does (textures: none, they are cropped instead; objects:
rotation_translation).
"""
from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

POLICIES = ("none", "auto", "auto_favae", "rot90_flip", "small_rotation", "texture",
            "rotation_translation")
_AUTO_POLICIES = ("auto", "auto_favae")
# §4.3.1. The demo categories (brick, grass, gravel) are textures too.
TEXTURE_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood", "brick", "grass", "gravel")
ROT90_CATEGORIES = ("bottle", "hazelnut", "metal_nut", "screw")


def resolve_policy(policy: str, category: str) -> str:
  """'auto' / 'auto_favae' -> the policy of an MVTec category; other policies pass through."""
  if policy == "auto_favae":
    return "none" if category in TEXTURE_CATEGORIES else "rotation_translation"
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


def _translation(image, rng, max_fraction: float):
  """A shift by up to +-max_fraction of the height / width (uniform), edges repeated."""
  height, width = image.shape[:2]
  shift = jax.random.uniform(rng, (2,), minval=-max_fraction, maxval=max_fraction)
  offset = jnp.concatenate([-shift * jnp.asarray([height, width], jnp.float32), jnp.zeros(1)])
  return pix.affine_transform(image, jnp.eye(3), offset=offset, order=1, mode="nearest")


def _random_crop_resized(image, rng, crop_fraction: float):
  height, width, channels = image.shape
  crop = (max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction)), channels)
  return jax.image.resize(pix.random_crop(rng, image, crop), image.shape, method="bilinear")


def augment_images(images, rng, policy: str, *, max_degrees: float = 10.0,
                   crop_fraction: float = 0.875, max_translation: float = 0.1):
  """images [B,H,W,C] float (square) -> augmented [B,H,W,C], an independent draw per image."""
  if policy == "none":
    return images

  def one(image, key):
    first, second = jax.random.split(key)
    if policy == "small_rotation":
      return _small_rotation(image, first, max_degrees)
    if policy == "rotation_translation":
      return _translation(_small_rotation(image, first, max_degrees), second, max_translation)
    image = _rot90_flip(image, first)
    if policy == "texture":
      image = _random_crop_resized(image, second, crop_fraction)
    return image

  if policy not in POLICIES or policy in _AUTO_POLICIES:
    resolved = [p for p in POLICIES if p not in _AUTO_POLICIES]
    raise ValueError(f"augmentation policy must be one of {resolved}, got {policy!r}")
  return jax.vmap(one)(images, jax.random.split(rng, images.shape[0]))
