"""Bilateral filter of score maps against OpenCV and a float64 NumPy brute force."""
import inspect

import cv2  # a dev dependency: a broken install must fail, not skip
import numpy as np
import pytest
import scipy.ndimage
import jax
import jax.numpy as jnp

from vqjax.ops.bilateral import bilateral_filter

SETTINGS = ("diameter", "sigma_color", "sigma_space")
bilateral_jit = jax.jit(bilateral_filter, static_argnames=SETTINGS)

# (diameter, sigma_color, sigma_space): the paper's setting, a small window with a sharp colour
# term, and d <= 0 (radius from sigma_space, OpenCV's rule).
PARAMS = [(20, 75.0, 75.0), (9, 10.0, 3.0), (0, 20.0, 2.5)]


def brute_force(image, diameter, sigma_color, sigma_space):
  """The definition in float64: circular window, reflect-101 border, Gaussian weights."""
  radius = max(diameter // 2 if diameter > 0 else round(1.5 * sigma_space), 1)
  image = np.asarray(image, np.float64)
  height, width = image.shape
  padded = np.pad(image, radius, mode="reflect")
  numerator = np.zeros_like(image)
  denominator = np.zeros_like(image)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      if np.hypot(dy, dx) > radius:
        continue
      values = padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width]
      weight = (np.exp(-(dy * dy + dx * dx) / (2 * sigma_space**2))
                * np.exp(-(values - image)**2 / (2 * sigma_color**2)))
      numerator += weight * values
      denominator += weight
  return numerator / denominator


def score_maps():
  # One shape (and one compile per setting) for all but the map smaller than the window.
  rng = np.random.default_rng(0)
  shape = (3, 40, 46)
  smooth = scipy.ndimage.gaussian_filter(rng.random(shape), (0, 3, 3))
  smooth = 255 * (smooth - smooth.min()) / (smooth.max() - smooth.min())
  blobs = np.zeros(shape)
  blobs[:, 10:22, 14:30] = 200.0  # a step edge the filter must keep
  blobs += 8 * rng.standard_normal(shape)
  return {
      "random": (255 * rng.random(shape)).astype(np.float32),
      "smooth": smooth.astype(np.float32),
      "edges": blobs.astype(np.float32),
      "offset": (1000 + 255 * rng.random(shape)).astype(np.float32),
      "smaller_than_window": (255 * rng.random((2, 7, 9))).astype(np.float32),
  }


MAPS = score_maps()


@pytest.mark.parametrize("params", PARAMS, ids=str)
@pytest.mark.parametrize("name", sorted(MAPS))
def test_matches_float64_definition(name, params):
  # float32 accumulation of weighted differences: rounding errors of the ~100-300 summed terms
  # grow like sqrt(n) * 2^-24 ~ 1e-6 of the largest |value|, the bound used
  # (measured <= 3.5e-7 of it, i.e. 9e-5 on 0..255 maps).
  maps = MAPS[name]
  ours = np.asarray(bilateral_jit(jnp.asarray(maps), diameter=params[0], sigma_color=params[1],
                                  sigma_space=params[2]))
  expected = np.stack([brute_force(m, *params) for m in maps])
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6 * np.abs(maps).max())


@pytest.mark.parametrize("use_ipp", [True, False])
@pytest.mark.parametrize("params", PARAMS, ids=str)
@pytest.mark.parametrize("name", sorted(MAPS))
def test_matches_opencv(name, params, use_ipp):
  # OpenCV (IPP or its own code) sums w * v in float32 and reads the colour weight from an
  # interpolated table; measured within 1.5e-6 of the largest |value| of ours (3.7e-4 on 0..255
  # maps), as far as OpenCV is from the float64 definition itself. Bound: 5e-6.
  maps = MAPS[name]
  saved = cv2.ipp.useIPP()
  cv2.ipp.setUseIPP(use_ipp)
  try:
    expected = np.stack([cv2.bilateralFilter(m, *params) for m in maps])
  finally:
    cv2.ipp.setUseIPP(saved)
  ours = np.asarray(bilateral_jit(jnp.asarray(maps), diameter=params[0], sigma_color=params[1],
                                  sigma_space=params[2]))
  np.testing.assert_allclose(ours, expected, rtol=0, atol=5e-6 * np.abs(maps).max())


def test_defaults_are_the_papers():
  defaults = inspect.signature(bilateral_filter).parameters
  assert [defaults[k].default for k in SETTINGS] == [20, 75.0, 75.0]


def test_images_are_filtered_independently():
  maps = MAPS["edges"]
  together = np.asarray(bilateral_jit(jnp.asarray(maps), diameter=9, sigma_color=10.0,
                                      sigma_space=3.0))
  alone = np.asarray(bilateral_jit(jnp.asarray(maps[1:2]), diameter=9, sigma_color=10.0,
                                   sigma_space=3.0))
  np.testing.assert_array_equal(alone[0], together[1])


def test_constant_map_unchanged_and_edges_kept():
  constant = jnp.full((1, 12, 15), 37.5, jnp.float32)
  np.testing.assert_array_equal(np.asarray(bilateral_filter(constant, diameter=5)), 37.5)
  step = np.zeros((1, 20, 20), np.float32)
  step[:, :, 10:] = 255.0
  out = np.asarray(bilateral_filter(jnp.asarray(step), diameter=5, sigma_color=10.0,
                                    sigma_space=5.0))
  # exp(-255^2 / 200) ~ 1e-141: nothing crosses the edge.
  np.testing.assert_array_equal(out, step)
