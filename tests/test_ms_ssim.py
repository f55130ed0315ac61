"""vqjax.ops.ms_ssim against a float64 NumPy MS-SSIM written here from Wang, Simoncelli & Bovik
(2003) and against the published `pytorch-msssim` package (dev extra)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.ops import ms_ssim as ops

# Jitted (keyword arguments static): eager op-by-op dispatch was most of these tests' time.
_ms_ssim = jax.jit(ops.ms_ssim, static_argnames=("weights", "window_size", "sigma", "k1", "k2",
                                                 "data_range"))
_ms_ssim_map = jax.jit(ops.ms_ssim_map, static_argnames=("weights", "window_size", "sigma", "k1",
                                                         "k2", "data_range"))


def _gauss(size, sigma):
  g = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
  return g / g.sum()


def _valid_filter(img, g):
  """2-D 'valid' correlation of img [H,W] with the separable window g (float64)."""
  h, w = img.shape
  k = len(g)
  rows = np.stack([img[i:i + h - k + 1] for i in range(k)], 0)
  img = np.tensordot(g, rows, axes=1)
  cols = np.stack([img[:, j:j + w - k + 1] for j in range(k)], 0)
  return np.tensordot(g, cols, axes=1)


def _pool(img):
  """2x2 mean; an odd side gets one zero on each side, counted in the mean."""
  ph, pw = img.shape[0] % 2, img.shape[1] % 2
  img = np.pad(img, ((ph, ph), (pw, pw)))
  h, w = img.shape[0] // 2, img.shape[1] // 2
  return img[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def reference_ms_ssim(x, y, weights, window_size, sigma=1.5, k1=0.01, k2=0.03, data_range=1.0):
  """x, y [H,W,C] float64 -> MS-SSIM (Wang et al. 2003 Eq. 7 with C3 = C2/2), channel mean."""
  g = _gauss(window_size, sigma)
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  values = []
  for c in range(x.shape[-1]):
    a, b = x[..., c], y[..., c]
    total = 1.0
    for m, w in enumerate(weights):
      if m:
        a, b = _pool(a), _pool(b)
      mu_a, mu_b = _valid_filter(a, g), _valid_filter(b, g)
      var_a = _valid_filter(a * a, g) - mu_a ** 2
      var_b = _valid_filter(b * b, g) - mu_b ** 2
      cov = _valid_filter(a * b, g) - mu_a * mu_b
      contrast = (2 * np.sqrt(np.maximum(var_a, 0) * np.maximum(var_b, 0)) + c2) / (
          var_a + var_b + c2)
      structure = (cov + c2 / 2) / (np.sqrt(np.maximum(var_a, 0) * np.maximum(var_b, 0)) + c2 / 2)
      term = contrast * structure
      if m == len(weights) - 1:
        term = term * (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
      total *= max(term.mean(), 1e-12) ** w
    values.append(total)
  return float(np.mean(values))


def _pair(rng, shape, noise=0.15):
  x = rng.uniform(0, 1, shape)
  x = 0.5 * x + 0.5 * np.roll(x, 1, axis=-2)  # some spatial correlation
  return x, np.clip(x + noise * rng.standard_normal(shape), 0, 1)


@pytest.mark.parametrize("weights,window,size", [
    (ops.GLOBAL_WEIGHTS, 3, 48), (ops.GLOBAL_WEIGHTS, 3, 37),  # odd side: padded pooling
    (ops.LOCAL_WEIGHTS, 3, 32), (ops.GLOBAL_WEIGHTS, 11, 176)])
def test_ms_ssim_matches_float64_reference(weights, window, size):
  rng = np.random.default_rng(0)
  x, y = _pair(rng, (2, size, size, 3))
  data_range = ops.normalized_range()
  x, y = x * data_range - 2.1179, y * data_range - 2.1179  # ImageNet-normalised-like values
  with jax.enable_x64(True):
    ours64 = np.asarray(_ms_ssim(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64),
                                    weights=weights, window_size=window, data_range=data_range))
  ours32 = np.asarray(_ms_ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                  weights=weights, window_size=window, data_range=data_range))
  ref = [reference_ms_ssim(x[i], y[i], weights, window, data_range=data_range) for i in range(2)]
  np.testing.assert_allclose(ours64, ref, rtol=0, atol=1e-10)
  np.testing.assert_allclose(ours32, ref, rtol=0, atol=1e-5)
  assert 0.1 < min(ref) < 0.99  # a pair that is neither identical nor unrelated


@pytest.mark.parametrize("weights,window,size,channels", [
    (ops.GLOBAL_WEIGHTS, 3, 40, 3), (ops.LOCAL_WEIGHTS, 3, 35, 1),
    (ops.GLOBAL_WEIGHTS, 11, 177, 3)])
def test_ms_ssim_matches_pytorch_msssim(weights, window, size, channels):
  torch = pytest.importorskip("torch", reason="dev extra: pip install -e '.[dev]'")
  from pytorch_msssim import ms_ssim as torch_ms_ssim  # dev extra
  rng = np.random.default_rng(1)
  x, y = _pair(rng, (3, size, size, channels), noise=0.1)
  data_range = ops.normalized_range()
  x, y = (x * data_range).astype(np.float32), (y * data_range).astype(np.float32)
  theirs = torch_ms_ssim(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                         torch.from_numpy(y.transpose(0, 3, 1, 2)), data_range=data_range,
                         size_average=False, win_size=window, weights=list(weights)).numpy()
  ours = np.asarray(_ms_ssim(jnp.asarray(x), jnp.asarray(y), weights=weights,
                                window_size=window, data_range=data_range))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_normalized_range_is_the_papers():
  assert ops.normalized_range() == pytest.approx(4.7579, abs=1e-4)  # §4.2


def test_smallest_scale_must_hold_a_window():
  """A coarsest scale smaller than the window is refused with the minimum size in the
  message; the minimum itself works (a 1x1 valid map at the last scale)."""
  assert ops.minimum_size(5, 3) == 33 and ops.minimum_size(4, 3) == 17
  assert ops.minimum_size(5, 11) == 161
  x = jnp.ones((1, 32, 32, 1)) * 0.5
  with pytest.raises(ValueError, match="at least 33x33"):
    ops.ms_ssim(x, x, window_size=3)
  with pytest.raises(ValueError, match="at least 33x33"):
    ops.ms_ssim_map(x, x, window_size=3)
  rng = np.random.default_rng(2)
  a, b = _pair(rng, (1, 33, 33, 1))
  ours = float(_ms_ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                           window_size=3)[0])
  assert ours == pytest.approx(reference_ms_ssim(a[0], b[0], ops.GLOBAL_WEIGHTS, 3), abs=1e-5)


def test_ms_ssim_map_properties():
  """Identical images give 1 everywhere; a local defect lowers the map there and only near it;
  for a map-wide product of equal terms the map equals the scalar."""
  rng = np.random.default_rng(3)
  x = rng.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
  same = np.asarray(_ms_ssim_map(jnp.asarray(x), jnp.asarray(x), window_size=3))
  np.testing.assert_allclose(same, 1.0, atol=1e-5)
  y = x.copy()
  y[:, 40:48, 8:16] = 1 - y[:, 40:48, 8:16]
  m = np.asarray(_ms_ssim_map(jnp.asarray(x), jnp.asarray(y), window_size=3))[0]
  assert m.shape == (64, 64)
  assert m[40:48, 8:16].mean() < 0.7 and m[:24, 40:].min() > 0.95


def test_ms_ssim_is_differentiable():
  rng = np.random.default_rng(4)
  x, y = _pair(rng, (2, 33, 33, 3))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  grad = jax.jit(jax.grad(lambda y: jnp.sum(ops.ms_ssim(x, y, window_size=3))))(y)
  grad_map = jax.jit(jax.grad(lambda y: jnp.sum(ops.ms_ssim_map(x, y, window_size=3))))(y)
  assert np.all(np.isfinite(grad)) and np.abs(np.asarray(grad)).max() > 0
  assert np.all(np.isfinite(grad_map)) and np.abs(np.asarray(grad_map)).max() > 0
  # Against central differences in float64 for one pixel.
  with jax.enable_x64(True):
    x64, y64 = jnp.asarray(np.asarray(x), jnp.float64), jnp.asarray(np.asarray(y), jnp.float64)
    loss = lambda y: jnp.sum(ops.ms_ssim(x64, y, window_size=3))
    f = lambda y: float(jax.jit(loss)(y))
    g = np.asarray(jax.jit(jax.grad(loss))(y64))
    eps = 1e-6
    bump = jnp.zeros_like(y64).at[0, 16, 16, 1].set(eps)
    numeric = (f(y64 + bump) - f(y64 - bump)) / (2 * eps)
  assert g[0, 16, 16, 1] == pytest.approx(numeric, rel=1e-5)
