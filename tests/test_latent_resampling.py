"""Latent resampling (Wang et al. 2020 Eq. 5): fast == sequential definition == NumPy walk."""
import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vqjax.ops.latent_resampling import neighbour_min, resample, resample_sequential

NUM_CODES = 7
STATIC = ("local_constraint", "constraint_from", "interior_only", "max_passes", "slots")
resample_jit = jax.jit(resample, static_argnums=0, static_argnames=STATIC)
sequential_jit = jax.jit(resample_sequential, static_argnums=0, static_argnames=STATIC[:3])


@functools.lru_cache(maxsize=None)
def causal_model(height, width, seed=0, dim=8):
  """A random causal prior: logits at raster position q depend on codes at positions < q only.

  Two mixing layers over raster positions, the first with a strictly lower-triangular mask
  (q sees r < q), the second lower-triangular (q sees the first layer at r <= q), tanh between.
  """
  size = height * width
  rng = np.random.default_rng(seed)
  # NumPy draws: eager jax.random ops would each compile, which dominates a small test.
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  embed = jnp.asarray(normal(NUM_CODES, dim))
  mix1 = jnp.asarray(normal(size, size) * np.tril(np.ones((size, size), np.float32), -1))
  lower = np.tril(np.ones((size, size), np.float32))
  mix2 = jnp.asarray(normal(size, size) * lower / np.sqrt(size))
  position = jnp.asarray(normal(size, dim))
  readout = jnp.asarray(2.5 * normal(dim, NUM_CODES))
  bias = jnp.asarray(normal(size, NUM_CODES))

  @jax.jit
  def logits_fn(tables):
    batch = tables.shape[0]
    x = embed[tables.reshape(batch, size)]
    h1 = jnp.tanh(jnp.einsum("qr,brd->bqd", mix1, x) + position)
    h2 = jnp.tanh(jnp.einsum("qr,brd->bqd", mix2, h1))
    return (h2 @ readout + bias).reshape(batch, height, width, NUM_CODES)

  return logits_fn


def random_tables(height, width, batch=4, seed=1):
  rng = np.random.default_rng(seed + 100 * height + width)
  return rng.integers(0, NUM_CODES, size=(batch, height, width)).astype(np.int32)


def _probs_and_best(logits_fn, tables):
  logits = np.asarray(logits_fn(jnp.asarray(tables, jnp.int32)), np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.take_along_axis(probs, tables[..., None], -1)[..., 0], logits.argmax(-1)


def reference_walk(logits_fn, tables, eta, local_constraint, constraint_from,
                   interior_only=False):
  """Eq. 5 as a plain loop: a full logits_fn pass on the current tables at every position
  (interior_only: only where 0 < m < H-1 and 0 < n < W-1)."""
  tables = np.array(tables, np.int64)
  _, height, width = tables.shape
  original_probs, _ = _probs_and_best(logits_fn, tables)

  def lowest_neighbour(probs, b, m, n):
    found = [probs[b, i, j] for i, j in ((m, n + 1), (m + 1, n - 1), (m + 1, n), (m + 1, n + 1))
             if 0 <= i < height and 0 <= j < width]
    return min(found) if found else 0.0

  for m in range(height):
    for n in range(width):
      if interior_only and not (0 < m < height - 1 and 0 < n < width - 1):
        continue
      probs, best = _probs_and_best(logits_fn, tables)
      source = original_probs if constraint_from == "original" else probs
      for b in range(tables.shape[0]):
        constraint = lowest_neighbour(source, b, m, n) if local_constraint else 0.0
        if probs[b, m, n] < eta and constraint < eta:
          tables[b, m, n] = best[b, m, n]
  return tables.astype(np.int32)


def pick_eta(logits_fn, tables, label):
  """Thresholds from 'no change' to 'every position tested', between observed probabilities."""
  probs = np.unique(_probs_and_best(logits_fn, tables.astype(np.int64))[0])
  if label == "none":
    return float(np.float32(probs[0] / 2))
  if label == "all":
    return 1.5
  i = int(float(label[1:]) / 100 * (len(probs) - 1))
  # A geometric midpoint keeps eta away from every probability seen on the original tables.
  return float(np.float32(np.sqrt(probs[i] * probs[i + 1])))


def expected_passes(original, resampled):
  changed = (resampled != original).reshape(len(original), -1)
  # After a change at the last position nothing is left to check: no final pass.
  return 1 + changed.sum(-1) - changed[:, -1]


def test_model_is_causal():
  logits_fn = causal_model(5, 6)
  tables = random_tables(5, 6)
  base = np.asarray(logits_fn(tables)).reshape(4, 30, NUM_CODES)
  for q in (0, 7, 29):
    edited = tables.reshape(4, 30).copy()
    edited[:, q:] = (edited[:, q:] + 1) % NUM_CODES
    out = np.asarray(logits_fn(edited.reshape(4, 5, 6))).reshape(4, 30, NUM_CODES)
    np.testing.assert_array_equal(out[:, :q + 1], base[:, :q + 1])


def test_neighbour_min_bottom_half():
  probs = jnp.arange(1.0, 7.0).reshape(1, 2, 3)  # [[1,2,3],[4,5,6]]
  expected = [[[2.0, 3.0, 5.0], [5.0, 6.0, 0.0]]]  # last position: no neighbours -> 0
  np.testing.assert_array_equal(np.asarray(neighbour_min(probs)), expected)


# Each (shape, options) compiles both loops once; eta is traced, so the thresholds reuse them.
# Single-row / single-column tables check the neighbours missing at the edges.
SETTINGS = [(5, 6, True, "original"), (5, 6, False, "original"), (6, 6, True, "original"),
            (6, 6, False, "original"), (6, 6, True, "current"), (1, 7, True, "original"),
            (4, 1, True, "original")]


@pytest.mark.parametrize("label", ["none", "q05", "q25", "q60", "all"])
@pytest.mark.parametrize("height,width,local_constraint,constraint_from", SETTINGS)
def test_fast_equals_sequential_equals_reference(height, width, local_constraint, constraint_from,
                                                 label):
  logits_fn = causal_model(height, width)
  tables = random_tables(height, width)
  eta = pick_eta(logits_fn, tables, label)
  options = dict(local_constraint=local_constraint, constraint_from=constraint_from)
  expected = reference_walk(logits_fn, tables, eta, **options)
  sequential = np.asarray(sequential_jit(logits_fn, tables, eta, **options))
  fast, passes, iterations = resample_jit(logits_fn, tables, eta, **options)
  np.testing.assert_array_equal(sequential, expected)
  np.testing.assert_array_equal(np.asarray(fast), expected)
  np.testing.assert_array_equal(np.asarray(passes), expected_passes(tables, expected))
  assert int(iterations) == int(np.max(passes))  # all images in one batch of slots
  if label == "none":
    assert (expected == tables).all()
  if label == "all" and height * width > 1:
    assert (expected != tables).sum() >= tables.size // 4


def test_thresholds_span_few_to_many_changes():
  logits_fn = causal_model(6, 6)
  tables = random_tables(6, 6)
  counts = [(reference_walk(logits_fn, tables, pick_eta(logits_fn, tables, label), True,
                            "original") != tables).sum() for label in ("none", "q05", "q60", "all")]
  assert counts[0] == 0 and 0 < counts[1] < counts[3] and counts[2] > 0


def test_batched_images_need_different_passes_and_match_single_calls():
  logits_fn = causal_model(6, 6)
  tables = random_tables(6, 6, batch=6, seed=3)
  eta = pick_eta(logits_fn, tables, "q25")
  fast, passes, _ = resample_jit(logits_fn, tables, eta, local_constraint=False)
  passes = np.asarray(passes)
  assert len(set(passes.tolist())) > 1
  for b in range(len(tables)):
    single, single_passes, _ = resample_jit(logits_fn, tables[b:b + 1], eta, local_constraint=False)
    np.testing.assert_array_equal(np.asarray(single)[0], np.asarray(fast)[b])
    assert int(single_passes[0]) == passes[b]


def test_jit_compiles_once_for_new_tables_and_eta():
  logits_fn = causal_model(5, 6)
  traces = []

  @jax.jit
  def run(tables, eta):
    traces.append(1)
    return resample(logits_fn, tables, eta)

  for seed, label in ((1, "q05"), (2, "q25"), (3, "all")):
    tables = random_tables(5, 6, seed=seed)
    eta = pick_eta(logits_fn, tables, label)
    out, passes, _ = run(tables, jnp.float32(eta))
    np.testing.assert_array_equal(np.asarray(out), reference_walk(logits_fn, tables, eta, True,
                                                                  "original"))
  assert len(traces) == 1


def test_max_passes_stops_after_that_many_changes():
  logits_fn = causal_model(6, 6)
  tables = random_tables(6, 6)
  eta = pick_eta(logits_fn, tables, "all")
  full, full_passes, _ = resample_jit(logits_fn, tables, eta)
  cut, cut_passes, _ = resample_jit(logits_fn, tables, eta, max_passes=3)
  np.testing.assert_array_equal(np.asarray(cut_passes), np.minimum(np.asarray(full_passes), 3))
  full, cut = np.asarray(full).reshape(4, -1), np.asarray(cut).reshape(4, -1)
  for b in range(4):
    changed = np.flatnonzero(full[b] != tables[b].ravel())
    expected = tables[b].ravel().copy()
    expected[changed[:3]] = full[b, changed[:3]]  # the walk's first three changes only
    np.testing.assert_array_equal(cut[b], expected)


def test_rejects_unknown_constraint_source():
  with pytest.raises(ValueError, match="constraint_from"):
    resample(causal_model(5, 6), random_tables(5, 6), 0.1, constraint_from="neighbours")


def refill_schedule_length(passes, slots):
  """Iterations of in-order continuous batching: image i starts in the first slot to free up
  (lowest slot first on ties) and holds it for passes[i] iterations."""
  free_at = [0] * slots
  for p in passes:
    s = min(range(slots), key=lambda k: (free_at[k], k))
    free_at[s] += int(p)
  return max(free_at)


@pytest.mark.parametrize("slots", [1, 3, 7, 50])
def test_slot_refill_gives_the_same_codes_and_passes(slots):
  logits_fn = causal_model(6, 6)
  tables = random_tables(6, 6, batch=7, seed=5)
  eta = pick_eta(logits_fn, tables, "q25")
  expected = reference_walk(logits_fn, tables, eta, True, "original")
  out, passes, iterations = resample_jit(logits_fn, tables, eta, slots=slots)
  passes = np.asarray(passes)
  np.testing.assert_array_equal(np.asarray(out), expected)
  np.testing.assert_array_equal(passes, expected_passes(tables, expected))
  assert len(set(passes.tolist())) > 1
  assert int(iterations) == refill_schedule_length(passes, min(slots, 7))


def test_slot_refill_cuts_prior_work_on_a_skewed_mix():
  # Six tables the prior leaves alone (one pass each) and one with many changes: with all
  # seven in one batch every iteration runs seven tables until the slow one is done.
  logits_fn = causal_model(6, 6)
  eta = pick_eta(logits_fn, random_tables(6, 6), "q60")
  settled = reference_walk(logits_fn, random_tables(6, 6, batch=1), eta, True, "original")
  tables = np.concatenate([random_tables(6, 6, batch=1, seed=7),
                           np.repeat(settled, 6, axis=0)]).astype(np.int32)
  _, passes, whole = resample_jit(logits_fn, tables, eta)
  _, passes_2, refilled = resample_jit(logits_fn, tables, eta, slots=2)
  np.testing.assert_array_equal(np.asarray(passes), np.asarray(passes_2))
  assert int(passes[0]) > 10 and int(np.max(passes[1:])) == 1
  assert int(refilled) == int(whole)  # the slow image alone sets the length...
  assert 3 * 2 * int(refilled) < 7 * int(whole)  # ...and the work drops by more than 3x


def test_no_tables_give_no_tables():
  out = resample(causal_model(5, 6), np.zeros((0, 5, 6), np.int32), 0.1, slots=4)
  assert out.tables.shape == (0, 5, 6) and out.passes.shape == (0,) and int(out.iterations) == 0


def test_rejects_zero_slots():
  with pytest.raises(ValueError, match="slots"):
    resample(causal_model(5, 6), random_tables(5, 6), 0.1, slots=0)


_SHARDED_RUN = """
import json, re, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from test_latent_resampling import causal_model, pick_eta, random_tables
from vqjax import sharding
from vqjax.ops.latent_resampling import resample
mesh = sharding.make_data_mesh()
logits_fn = causal_model(6, 6)
tables = random_tables(6, 6, batch=8, seed=3)
eta = pick_eta(logits_fn, tables, "q25")
batch_sharded = NamedSharding(mesh, P(mesh.axis_names[0]))
out = {{"devices": jax.device_count()}}
for slots in (None, 3):
  run = jax.jit(lambda t: resample(logits_fn, t, eta, slots=slots), in_shardings=batch_sharded)
  hlo = run.lower(tables).compile().as_text()
  result = run(tables)
  collectives = ("all-gather(", "all-reduce(", "all-to-all(", "collective-permute(")
  out[str(slots)] = {{"collectives": sum(hlo.count(c) for c in collectives),
                     # arrays holding all 8 tables ([8,6,6] or [8,36]) on one device
                     "full_batch_arrays": len(re.findall(r"\\[8,(?:6,6|36)[,\\]]", hlo)),
                     "tables": np.asarray(result.tables).tolist(),
                     "passes": np.asarray(result.passes).tolist()}}
print(json.dumps(out))
"""


def test_batch_sharded_over_four_devices_gives_the_same_codes(tmp_path):
  import json
  import os
  import subprocess
  import sys
  from pathlib import Path
  tests = Path(__file__).resolve().parent
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", _SHARDED_RUN.format(tests=str(tests))], env=env,
                        capture_output=True, text=True, timeout=600, cwd=tests.parent)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  logits_fn = causal_model(6, 6)
  tables = random_tables(6, 6, batch=8, seed=3)
  eta = pick_eta(logits_fn, tables, "q25")
  expected = reference_walk(logits_fn, tables, eta, True, "original")
  for slots in ("None", "3"):
    np.testing.assert_array_equal(np.asarray(out[slots]["tables"]), expected)
    np.testing.assert_array_equal(out[slots]["passes"], expected_passes(tables, expected))
  # In place (slots = batch), every image stays on its device (2 of the 8 tables each); the
  # only collective is the loop condition's "any image left" reduction.
  assert out["None"]["full_batch_arrays"] == 0
  assert out["None"]["collectives"] <= 2


@pytest.mark.slow  # the op's slot refill is exact for slots 1, 3, 7, 50 above (fast tests)
def test_method_predict_gives_the_same_maps_with_slot_refill(monkeypatch):
  # anomaly.resample_slots reaches resample() and changes nothing but the schedule.
  from configs import mvtec_vq_resample
  from vqjax.methods import get_method
  from vqjax.methods import latent_resampling as method_module
  seen_slots = []

  def recording_resample(*args, **kwargs):
    seen_slots.append(kwargs.get("slots"))
    return resample(*args, **kwargs)

  monkeypatch.setattr(method_module, "resample", recording_resample)
  config = mvtec_vq_resample.get_config("smoke")
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  variables = None
  outputs = {}
  for slots in (0, 3):
    config.anomaly.resample_slots = slots
    method = get_method(config, 3)
    if variables is None:
      vq = method.vq.init(jax.random.key(0), jnp.asarray(images, jnp.float32) / 255)
      tables = method.vq.encode_indices(vq, images)
      variables = {"vqvae": vq, "prior": method.prior.init(jax.random.key(1), tables),
                   "eta": jnp.float32(0.5)}  # a random prior: many codes below 0.5
    outputs[slots] = jax.jit(method.predict)(variables, images)
  assert seen_slots == [None, 3]  # 0 = the whole batch
  assert (np.asarray(outputs[0]["resampled_indices"]) != np.asarray(outputs[0]["indices"])).any()
  np.testing.assert_array_equal(np.asarray(outputs[3]["resampled_indices"]),
                                np.asarray(outputs[0]["resampled_indices"]))
  np.testing.assert_array_equal(np.asarray(outputs[3]["maps"]["resample"]),
                                np.asarray(outputs[0]["maps"]["resample"]))


@pytest.mark.parametrize("label", ["q25", "all"])
@pytest.mark.parametrize("local_constraint", [True, False])
def test_interior_only_keeps_the_border_and_stays_exact(label, local_constraint):
  # Eq. 5's stated domain 1 < m, n < M, N: the walk equals the reference restricted to it.
  height, width = 5, 6
  logits_fn = causal_model(height, width)
  tables = random_tables(height, width)
  eta = pick_eta(logits_fn, tables, label)
  options = dict(local_constraint=local_constraint, constraint_from="original")
  expected = reference_walk(logits_fn, tables, eta, interior_only=True, **options)
  sequential = np.asarray(sequential_jit(logits_fn, tables, eta, interior_only=True, **options))
  fast, passes, _ = resample_jit(logits_fn, tables, eta, interior_only=True, **options)
  np.testing.assert_array_equal(sequential, expected)
  np.testing.assert_array_equal(np.asarray(fast), expected)
  np.testing.assert_array_equal(np.asarray(passes), expected_passes(tables, expected))
  border = np.ones((height, width), bool)
  border[1:-1, 1:-1] = False
  np.testing.assert_array_equal(expected[:, border], np.asarray(tables)[:, border])
  everywhere = reference_walk(logits_fn, tables, eta, **options)
  if label == "all":
    assert (everywhere[:, border] != np.asarray(tables)[:, border]).any()  # the option matters
    assert (expected[:, ~border] != np.asarray(tables)[:, ~border]).any()
