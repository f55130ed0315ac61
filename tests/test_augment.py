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


def _crop_resize_matches(image, augmented, crop):
  """[(dihedral index, top, left)] whose crop, bilinearly resized back by scikit-image (an
  independent resize, edge-clamped like jax.image.resize), equals `augmented`."""
  from skimage.transform import resize
  size = image.shape[0]
  matches = []
  for d, rotated in enumerate(_dihedral(image)):
    for top in range(size - crop + 1):
      for left in range(size - crop + 1):
        resized = resize(rotated[top:top + crop, left:left + crop].astype(np.float64),
                         image.shape, order=1, mode="edge", anti_aliasing=False)
        if np.abs(resized - augmented).max() < 1e-5:  # float32 interpolation: ~1e-7 measured
          matches.append((d, top, left))
  return matches


def test_texture_policy_is_a_resized_crop_of_a_rotation_or_flip():
  images = _images()
  out = np.asarray(augment_images(images, jax.random.key(1), "texture", crop_fraction=0.5))
  picks = []
  for image, aug in zip(np.asarray(images), out):
    matches = _crop_resize_matches(image, aug, crop=8)
    assert len(matches) == 1, matches
    picks.append(matches[0])
  assert len({p[0] for p in picks}) > 1 and len({p[1:] for p in picks}) > 1  # per-image draws


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
