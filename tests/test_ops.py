"""Fused ops against independent references (scikit-image, SciPy, float64 NumPy)."""
import numpy as np
import pytest
import scipy.integrate
import scipy.ndimage
import skimage.data
import skimage.metrics
import jax
import jax.numpy as jnp
from jax import lax

from vqjax.ops import continuous_bernoulli as cb
from vqjax.ops.anomaly_maps import ssim_anomaly_map
from vqjax.ops.morphology import grey_dilation
from vqjax.ops.ssim import ssim_map
from vqjax.ops.vector_quantize import nearest_codes


def _skimage_ssim_full(x, y, **kw):
  """Full-size SSIM map per channel from scikit-image (float64)."""
  return np.stack([skimage.metrics.structural_similarity(
      x[..., c], y[..., c], full=True, data_range=1.0, **kw)[1] for c in range(x.shape[-1])], -1)


def _pairs():
  rng = np.random.default_rng(0)
  noise = rng.random((2, 37, 45, 3))
  real = skimage.data.astronaut()[100:228, 150:278] / 255.0
  degraded = np.clip(scipy.ndimage.gaussian_filter(real, (1.2, 1.2, 0))
                     + 0.05 * rng.standard_normal(real.shape), 0, 1)
  return [("random", noise[0], noise[1]), ("real", real, degraded)]


@pytest.mark.parametrize("name,x,y", _pairs())
def test_ssim_map_matches_skimage_gaussian_everywhere(name, x, y):
  # Border convention: mirrored padding ('symmetric' = scipy 'reflect'); the full map,
  # borders included, must match scikit-image's full=True output. In float64 the formula
  # must agree to rounding; in float32 (what runs in practice) to 1.5e-4 absolute.
  ref = _skimage_ssim_full(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
  with jax.enable_x64(True):
    ours64 = np.asarray(ssim_map(jnp.asarray(x[None], jnp.float64), jnp.asarray(y[None], jnp.float64),
                                 window="gaussian", window_size=11, sigma=1.5))[0]
  np.testing.assert_allclose(ours64, ref, atol=1e-10, err_msg=name)
  ours32 = np.asarray(ssim_map(jnp.asarray(x[None], jnp.float32), jnp.asarray(y[None], jnp.float32),
                               window="gaussian", window_size=11, sigma=1.5))[0]
  assert ours32.shape == x.shape and ours32.dtype == np.float32
  np.testing.assert_allclose(ours32, ref, atol=1.5e-4, err_msg=name)


def test_ssim_map_matches_skimage_uniform_sample_covariance():
  _, x, y = _pairs()[1]
  ref = _skimage_ssim_full(x, y, win_size=15, use_sample_covariance=True)
  with jax.enable_x64(True):
    ours = np.asarray(ssim_map(jnp.asarray(x[None], jnp.float64), jnp.asarray(y[None], jnp.float64),
                               window="uniform", window_size=15, sample_covariance=True))[0]
  np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_ssim_anomaly_map_identical_images_is_zero_and_mean_over_channels():
  x = jnp.asarray(np.random.default_rng(1).random((2, 20, 20, 3)), jnp.float32)
  np.testing.assert_allclose(ssim_anomaly_map(x, x), 0.0, atol=1e-5)
  y = jnp.clip(x + 0.1, 0, 1)
  per_channel = 1 - ssim_map(x, y, window_size=7)
  np.testing.assert_allclose(ssim_anomaly_map(x, y, window_size=7), per_channel.mean(-1), rtol=1e-6)
  np.testing.assert_allclose(ssim_anomaly_map(x, y, window_size=7, channel_reduction="product"),
                             per_channel.prod(-1), rtol=1e-5)


def _image_pairs(batch, size=24, seed=2):
  rng = np.random.default_rng(seed)
  x = rng.random((batch, size, size, 3), dtype=np.float32)
  return x, np.clip(x + 0.2 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)


@pytest.mark.parametrize("batch", [1, 15, 16, 21, 32])
def test_ssim_anomaly_map_in_cpu_chunks_equals_the_whole_batch(batch):
  # Chunking changes which images a kernel sees at once, never a value; it engages (a loop in
  # the CPU program) from 2 chunks up, padding a last partial chunk.
  x, y = _image_pairs(batch)
  kw = dict(window_size=5, sigma=1.0, channel_reduction="product")
  whole = jax.jit(lambda a, b: ssim_anomaly_map(a, b, cpu_batch_chunk=0, **kw))
  chunked = jax.jit(lambda a, b: ssim_anomaly_map(a, b, cpu_batch_chunk=8, **kw))
  np.testing.assert_allclose(chunked(x, y), whole(x, y), rtol=0, atol=1e-6)
  assert ("stablehlo.while" in chunked.lower(x, y).as_text()) == (batch >= 16)
  assert "stablehlo.while" not in whole.lower(x, y).as_text()


def test_ssim_anomaly_map_exported_with_a_symbolic_batch_chunks_at_run_time():
  # An exported artifact does not know its batch: small batches run whole, large ones in
  # chunks, each platform's program carrying its own choice.
  from jax import export as jax_export
  batch, = jax_export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, 24, 24, 3), np.float32)
  exported = jax_export.export(
      jax.jit(lambda a, b: ssim_anomaly_map(a, b, window_size=5, cpu_batch_chunk=8)),
      platforms=("cpu", "cuda"))(spec, spec)
  for n in (1, 8, 19, 32):
    x, y = _image_pairs(n, seed=n)
    np.testing.assert_allclose(exported.call(x, y),
                               ssim_anomaly_map(x, y, window_size=5, cpu_batch_chunk=0),
                               rtol=0, atol=1e-6, err_msg=f"batch {n}")


def test_cpu_ssim_chunk_keeps_a_chunks_moments_within_a_megabyte():
  from vqjax.ops.anomaly_maps import cpu_ssim_batch_chunk
  assert cpu_ssim_batch_chunk((64, 64, 3)) == 4  # the measured best at 64 px RGB
  assert cpu_ssim_batch_chunk((64, 64, 1)) == 12
  assert cpu_ssim_batch_chunk((128, 128, 3)) == 1
  assert cpu_ssim_batch_chunk((256, 256, 3)) == 1


_SHARDED_SSIM = """
import json, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from vqjax.ops.anomaly_maps import ssim_anomaly_map
rng = np.random.default_rng(0)
x = rng.random((32, 24, 24, 3), dtype=np.float32)
y = np.clip(x + 0.2 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)
sharding = NamedSharding(jax.make_mesh((4,), ("batch",)), P("batch"))
xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
chunked = jax.jit(lambda a, b: ssim_anomaly_map(a, b, window_size=5, cpu_batch_chunk=4))
hlo = chunked.lower(xs, ys).compile().as_text()
out = chunked(xs, ys)
print(json.dumps({"devices": len(out.sharding.device_set), "loops": hlo.count(" while("),
                  "max_diff": float(np.abs(np.asarray(out) - np.asarray(ssim_anomaly_map(
                      x, y, window_size=5, cpu_batch_chunk=0))).max()),
                  "collectives": sum(hlo.count(c) for c in ("all-gather(", "all-reduce(",
                                                            "all-to-all(", "collective-permute("))}))
"""


def test_ssim_anomaly_map_chunks_a_sharded_batch_on_each_device():
  # A batch sharded over 4 CPU devices: the chunks are strided so that each device loops over
  # its own images; no image crosses devices (no collective) and the map is the same.
  import json
  import os
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _SHARDED_SSIM], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4 and out["loops"] >= 1
  assert out["max_diff"] <= 1e-6
  assert out["collectives"] == 0


@pytest.mark.parametrize("size", [1, 3, 7])
def test_grey_dilation_matches_scipy(size):
  maps = np.random.default_rng(2).random((3, 16, 21)).astype(np.float32)
  ref = np.stack([scipy.ndimage.grey_dilation(m, size=(size, size)) for m in maps])
  np.testing.assert_array_equal(np.asarray(grey_dilation(jnp.asarray(maps), size)), ref)


def test_nearest_codes_matches_brute_force_argmin():
  rng = np.random.default_rng(3)
  z = rng.standard_normal((2, 5, 7, 16)).astype(np.float32)
  codebook = rng.standard_normal((64, 16)).astype(np.float32)
  idx, q, dist = map(np.asarray, nearest_codes(jnp.asarray(z), jnp.asarray(codebook)))
  d64 = ((z[..., None, :].astype(np.float64) - codebook.astype(np.float64)) ** 2).sum(-1)
  np.testing.assert_array_equal(idx, d64.argmin(-1))
  np.testing.assert_array_equal(q, codebook[idx])
  np.testing.assert_allclose(dist, d64.min(-1), rtol=1e-5)
  assert idx.dtype == np.int32 and dist.shape == (2, 5, 7)


def _cb_log_prob_f64(x, lam):
  """Textbook float64 continuous-Bernoulli log-density (Loaiza-Ganem & Cunningham, Eq. 7)."""
  if abs(lam - 0.5) < 1e-12:
    log_c = np.log(2.0)
  else:
    log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
  return x * np.log(lam) + (1 - x) * np.log1p(-lam) + log_c


LAMBDAS = [1e-4, 0.02, 0.3, 0.49, 0.4999, 0.5, 0.5003, 0.51, 0.7, 0.98, 1 - 1e-4]


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_log_prob_vs_float64_and_integrates_to_one(lam):
  logit = np.log(lam) - np.log1p(-lam)
  xs = np.linspace(0, 1, 101)
  ours = np.asarray(cb.log_prob(jnp.asarray(xs, jnp.float32), jnp.full(xs.shape, logit, jnp.float32)))
  ref = np.array([_cb_log_prob_f64(x, lam) for x in xs])
  np.testing.assert_allclose(ours, ref, atol=2e-4 * max(1, abs(logit)))
  # The density (with its normaliser) integrates to 1 over [0, 1].
  total, _ = scipy.integrate.quad(
      lambda x: float(np.exp(cb.log_prob(jnp.float32(x), jnp.float32(logit)))), 0, 1, limit=200)
  assert abs(total - 1) < 1e-4


@pytest.mark.parametrize("lam", LAMBDAS)
def test_continuous_bernoulli_mean_vs_numerical_expectation(lam):
  logit = np.log(lam) - np.log1p(-lam)
  expectation, _ = scipy.integrate.quad(lambda x: x * np.exp(_cb_log_prob_f64(x, lam)), 0, 1)
  assert abs(float(cb.mean(jnp.float32(logit))) - expectation) < 2e-5


def test_continuous_bernoulli_gradients_finite_at_half():
  grads = jax.grad(lambda e: jnp.sum(cb.log_prob(0.3, e) + cb.mean(e)))(
      jnp.array([0.0, 1e-4, 0.0999, 0.1001, 5.0], jnp.float32))
  assert np.all(np.isfinite(np.asarray(grads)))


# (batch, input size, kernel, stride, padding, channels in, out): small outputs take the
# CPU's im2col path (shifted slices + one dot), large ones stay convolutions.
_SMALL_CONVS = [
    (1, 4, 3, 1, ((1, 1), (1, 1)), 16, 24),  # VGG16's conv4 case: 16 positions
    (2, 9, 3, 2, ((1, 1), (1, 1)), 8, 8),  # strided, odd size: 2 x 5 x 5 = 50
    (1, 13, 7, 2, ((3, 3), (3, 3)), 3, 8),  # ResNet18's stem at a small input
    (3, 6, 1, 2, ((0, 0), (0, 0)), 8, 16),  # a 1x1 stride-2 shortcut
    (1, 7, 4, 2, ((1, 1), (1, 1)), 4, 4),  # even kernel, odd size
    (1, 8, 3, 1, "SAME", 4, 4),
    (2, 16, 3, 1, ((1, 1), (1, 1)), 4, 4),  # 512 positions: a convolution
]


@pytest.mark.parametrize("batch,size,kernel,stride,padding,cin,cout", _SMALL_CONVS)
def test_small_map_conv_equals_lax_conv_and_is_a_dot_on_cpu_when_small(
    batch, size, kernel, stride, padding, cin, cout):
  from vqjax.ops.small_conv import CPU_IM2COL_MAX_ROWS, small_map_conv
  rng = np.random.default_rng(size)
  x = rng.standard_normal((batch, size, size, cin), dtype=np.float32)
  w = rng.standard_normal((kernel, kernel, cin, cout), dtype=np.float32)
  args = ((stride, stride), padding)
  kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = jax.jit(lambda a, b: small_map_conv(a, b, *args, **kw))
  want = lax.conv_general_dilated(x, w, *args, precision="highest", **kw)
  got = ours(x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  hlo = ours.lower(x, w).compile().as_text()
  small = batch * want.shape[1] * want.shape[2] <= CPU_IM2COL_MAX_ROWS
  assert ("convolution(" in hlo) != small and ("dot(" in hlo) == small
  # Gradients (a frozen backbone seldom needs them, a fine-tuned one would) agree too.
  loss = lambda f: jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b))), argnums=(0, 1))
  for g, h in zip(loss(ours)(x, w), loss(lambda a, b: lax.conv_general_dilated(
      a, b, *args, precision="highest", **kw))(x, w)):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-3)


def test_small_map_conv_leaves_other_layouts_and_groups_to_lax():
  from vqjax.ops.small_conv import small_map_conv
  x = jnp.ones((1, 8, 4, 4))  # NCHW, lax's default
  w = jnp.ones((8, 8, 3, 3))
  plain = jax.jit(lambda a, b: small_map_conv(a, b, (1, 1), "SAME"))
  assert "dot(" not in plain.lower(x, w).compile().as_text()
  np.testing.assert_array_equal(plain(x, w), lax.conv_general_dilated(x, w, (1, 1), "SAME"))
  grouped = jax.jit(lambda a, b: small_map_conv(a, b, (1, 1), "SAME", feature_group_count=2,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC")))
  x, w = jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 4, 8))
  assert "dot(" not in grouped.lower(x, w).compile().as_text()


def test_small_map_conv_exported_with_a_symbolic_batch_chooses_at_run_time():
  from jax import export as jax_export
  from vqjax.ops.small_conv import small_map_conv
  batch, = jax_export.symbolic_shape("batch")
  kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
  w = np.random.default_rng(0).standard_normal((3, 3, 4, 8), dtype=np.float32)
  exported = jax_export.export(
      jax.jit(lambda a: small_map_conv(a, w, (1, 1), ((1, 1), (1, 1)), **kw)),
      platforms=("cpu", "cuda"))(jax.ShapeDtypeStruct((batch, 8, 8, 4), np.float32))
  for n in (1, 4, 5, 9):  # 64 positions an image: 4 images are at the bound
    x = np.random.default_rng(n).standard_normal((n, 8, 8, 4), dtype=np.float32)
    np.testing.assert_allclose(
        exported.call(x), lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                   precision="highest", **kw),
        rtol=1e-5, atol=1e-4, err_msg=f"batch {n}")
