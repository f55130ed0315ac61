"""PixelSNAIL prior: raster-order causality by exact gradients, shapes/dtypes, learnability."""
import functools
import math

import numpy as np
import optax
import pytest
import jax
import jax.numpy as jnp

from vqjax.models.pixelsnail import PixelSNAIL, nll_per_table

K, H, W = 11, 6, 7  # non-square so that rows and columns cannot be mixed up unnoticed


def _make_test_model(**overrides):
  kw = dict(num_codes=K, channels=16, num_blocks=2, num_res_blocks=1, num_heads=4,
            kernel_size=5, dropout=0.1)
  kw.update(overrides)
  return PixelSNAIL(**kw)


def _tables(batch, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, H, W), 0, K, dtype=jnp.int32)


# Everything runs jitted: op-by-op dispatch of the many small modules costs more than
# compiling. Modules are hashable, so tests with equal models share the compiled functions.
@functools.partial(jax.jit, static_argnums=0)
def _init(model, indices):
  return model.init(jax.random.key(1), indices, train=False)


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def _apply(model, variables, inputs, *, train=False, seed=None):
  rngs = {} if seed is None else {"dropout": jax.random.key(seed)}
  return model.apply(variables, inputs, train=train, rngs=rngs)


def _dependency(fn, x):
  """dep[b,p,c,q] = sum_k,k' |d fn(x)[b,p,k] / d x[c,q,k']| for one-hot x [B,H,W,K] (p, q raster)."""
  jac = np.asarray(jax.jit(jax.jacrev(fn))(x))  # [B,H,W,K, B,H,W,K]
  batch = x.shape[0]
  return np.abs(jac).sum(axis=(3, 7)).reshape(batch, H * W, batch, H * W)


def _causality_violations(dep):
  """(b, p, c, q) where output (b,p) depends on input (c,q) although c != b or q >= p."""
  batch, n = dep.shape[0], dep.shape[1]
  allowed = np.zeros_like(dep, bool)
  for b in range(batch):
    allowed[b, :, b, :] = np.tril(np.ones((n, n), bool), k=-1)
  return np.argwhere((dep != 0) & ~allowed)


@pytest.mark.parametrize("kernel_size,weight_norm,num_heads,num_res_blocks",
                         [(5, True, 4, 1), (3, False, 2, 2)])
def test_logits_depend_only_on_earlier_positions_of_the_same_table(
    kernel_size, weight_norm, num_heads, num_res_blocks):
  model = _make_test_model(kernel_size=kernel_size, weight_norm=weight_norm,
                           num_heads=num_heads, num_res_blocks=num_res_blocks, dropout=0.0)
  indices = _tables(2)
  variables = _init(model, indices)
  x = jax.nn.one_hot(indices, K, dtype=jnp.float32)
  dep = _dependency(lambda x: model.apply(variables, x, train=False), x)

  # Exactly zero: other table, own position (mask A at the input) and every later position.
  assert _causality_violations(dep).size == 0
  for b in range(2):
    own = dep[b, :, b, :]
    for p in range(1, H * W):
      assert own[p, :p].any(), f"position {p} depends on nothing before it"
    for i in range(H):
      for j in range(W):
        p = i * W + j
        # The neighbours the input stack must see: left, above, above-right (the classic
        # PixelCNN blind spot).
        for di, dj in [(0, -1), (-1, 0), (-1, 1)]:
          if 0 <= i + di < H and 0 <= j + dj < W:
            assert own[p, (i + di) * W + j + dj] != 0, (p, di, dj)
    # Attention reaches the whole past: the last code depends on every earlier code.
    assert (own[-1, :-1] != 0).all()


def test_dependency_check_catches_an_off_by_one_leak():
  # The same model fed the table shifted one position left sees z_ij at (i,j-1)'s slot, so
  # logits at p then depend on p itself: the check above must flag it.
  model = _make_test_model(dropout=0.0)
  indices = _tables(1)
  variables = _init(model, indices)
  x = jax.nn.one_hot(indices, K, dtype=jnp.float32)
  leaky = lambda x: model.apply(variables, jnp.roll(x, -1, axis=2), train=False)
  violations = _causality_violations(_dependency(leaky, x))
  assert violations.size and any(p == q for _, p, _, q in violations)


def test_shapes_dtypes_and_no_nan_at_the_first_position():
  model = _make_test_model()
  indices = _tables(3)
  variables = _init(model, indices)
  logits = _apply(model, variables, indices)
  assert logits.shape == (3, H, W, K) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  # Position (0,0) sees no code (its attention row is fully masked): same logits for every table.
  np.testing.assert_array_equal(logits[0, 0, 0], logits[1, 0, 0])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))

  # The fully masked attention row must not poison the backward pass either.
  def loss(params):
    out = model.apply({"params": params}, indices, train=True,
                      rngs={"dropout": jax.random.key(2)})
    return nll_per_table(out, indices).mean()
  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_integer_and_one_hot_inputs_agree():
  model = _make_test_model()
  indices = _tables(2)
  variables = _init(model, indices)
  from_int = _apply(model, variables, indices)
  from_one_hot = _apply(model, variables, jax.nn.one_hot(indices, K))
  np.testing.assert_allclose(from_int, from_one_hot, rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
  indices = _tables(2)
  variables = _init(_make_test_model(), indices)
  ref = _apply(_make_test_model(), variables, indices)
  model = _make_test_model(dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(_init(model, indices)))
  logits = _apply(model, variables, indices)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(logits, ref, atol=0.1)


def test_eval_is_deterministic_and_train_mode_dropout_is_random():
  model = _make_test_model(dropout=0.1)
  indices = _tables(2)
  variables = _init(model, indices)
  eval_a = _apply(model, variables, indices)
  eval_b = _apply(model, variables, indices, seed=7)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = lambda seed: _apply(model, variables, indices, train=True, seed=seed)
  assert not np.allclose(train(3), eval_a)
  assert not np.allclose(train(3), train(4))
  np.testing.assert_array_equal(train(3), train(3))


def test_nll_per_table_matches_float64_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, H, W, K)) * 3
  indices = rng.integers(0, K, size=(3, H, W))
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  ref = -np.take_along_axis(log_probs, indices[..., None], -1)[..., 0].mean(axis=(1, 2))
  ours = nll_per_table(jnp.asarray(logits, jnp.float32), jnp.asarray(indices, jnp.int32))
  assert ours.shape == (3,) and ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  np.testing.assert_allclose(nll_per_table(jnp.zeros((2, H, W, K)), jnp.asarray(indices[:2])),
                             math.log(K), rtol=1e-6)


def test_learns_a_deterministic_raster_pattern():
  # z_ij = (s_b + i + j) mod K with a random offset s_b per table: z_00 is a fair coin over K
  # codes, every other code is fixed by its left (or upper) neighbour. Best NLL = log K / (H*W).
  offsets = jax.random.randint(jax.random.key(5), (8, 1, 1), 0, K)
  indices = (offsets + jnp.arange(H)[:, None] + jnp.arange(W)[None, :]) % K
  model = _make_test_model(dropout=0.0)
  params = _init(model, indices)["params"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(params):
    return nll_per_table(model.apply({"params": params}, indices, train=True), indices).mean()

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  first = None
  for _ in range(100):
    params, opt_state, loss = step(params, opt_state)
    first = float(loss) if first is None else first
  final = float(jax.jit(loss_fn)(params))
  assert first > 0.8 * math.log(K)
  assert final < 0.2 * math.log(K), (first, final)
