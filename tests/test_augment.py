"""On-device augmentations: each policy does what it says, per image, deterministically."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.data.augment import augment_images, resolve_policy


def _images():
  return jnp.asarray(np.random.default_rng(0).random((6, 16, 16, 3)), jnp.float32)


def _dihedral(image):
  """The 8 rotations/flips of a square image [H,W,C]."""
  out = []
  for k in range(4):
    r = np.rot90(image, k, axes=(0, 1))
    out += [r, r[:, ::-1]]
  return out


def test_rot90_flip_gives_one_of_the_eight_dihedral_images_per_image():
  images = _images()
  out = np.asarray(augment_images(images, jax.random.key(3), "rot90_flip"))
  variants_seen = set()
  for image, aug in zip(np.asarray(images), out):
    matches = [i for i, d in enumerate(_dihedral(image)) if np.array_equal(d, aug)]
    assert len(matches) == 1
    variants_seen.add(matches[0])
  assert len(variants_seen) > 1  # independent draws per image


def test_small_rotation_keeps_centre_and_changes_image():
  images = _images()
  out = np.asarray(augment_images(images, jax.random.key(0), "small_rotation", max_degrees=10.0))
  assert out.shape == images.shape
  assert not np.allclose(out, images)
  np.testing.assert_allclose(out[:, 7:9, 7:9], np.asarray(images)[:, 7:9, 7:9], atol=0.5)
  zero = np.asarray(augment_images(images, jax.random.key(0), "small_rotation", max_degrees=0.0))
  np.testing.assert_allclose(zero, images, atol=1e-5)


def test_texture_policy_crops_and_resizes_back():
  images = _images()
  out = augment_images(images, jax.random.key(1), "texture", crop_fraction=0.5)
  assert out.shape == images.shape and out.dtype == images.dtype
  assert augment_images(images, jax.random.key(1), "none") is images
  np.testing.assert_array_equal(out, augment_images(images, jax.random.key(1), "texture",
                                                    crop_fraction=0.5))


@pytest.mark.parametrize("category,policy", [("carpet", "texture"), ("brick", "texture"),
                                             ("screw", "rot90_flip"), ("cable", "small_rotation")])
def test_auto_policy_follows_wang_section_4_3_1(category, policy):
  assert resolve_policy("auto", category) == policy
  assert resolve_policy("none", category) == "none"
