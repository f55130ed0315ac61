"""PixelSNAIL prior: raster-order causality by exact gradients, shapes/dtypes, learnability.

CPU compile time dominates here, so every model call is jitted, parameters are initialised once
per architecture (compute dtype and dropout rate do not change the parameter tree), and tests
share one batch shape so that they share compiled functions.
"""
import functools
import math

import numpy as np
import optax
import pytest
import jax
import jax.numpy as jnp

from vqjax.models.pixelsnail import PixelSNAIL, nll_per_table

K, H, W, B = 11, 6, 7, 2  # non-square so that rows and columns cannot be mixed up unnoticed


def _key(seed):
  # RBG keys: XLA:CPU compiles a parameter init about twice as fast as with threefry.
  return jax.random.key(seed, impl="rbg")


def _make_test_model(**overrides):
  kw = dict(num_codes=K, channels=16, num_blocks=2, num_res_blocks=1, num_heads=4,
            kernel_size=5, dropout=0.1)
  kw.update(overrides)
  return PixelSNAIL(**kw)


def _tables(seed=0):
  return jax.random.randint(jax.random.key(seed), (B, H, W), 0, K, dtype=jnp.int32)


@functools.lru_cache(maxsize=None)
def _variables(model):
  init = jax.jit(lambda indices: model.init(_key(1), indices, train=False))
  return init(_tables())


@functools.partial(jax.jit, static_argnums=0, static_argnames="train")
def _apply(model, variables, inputs, *, train=False, seed=None):
  rngs = {} if seed is None else {"dropout": _key(seed)}
  return model.apply(variables, inputs, train=train, rngs=rngs)


def _dependency(fn, x):
  """fn(x) [B,H,W,K] from x [B,H,W,K] -> (fn(x), dep [B,HW,B,HW]).

  dep[b,p,c,q] = sum over k,k' of |d fn(x)[b,p,k] / d x[c,q,k']|, positions p, q in raster order.
  """
  jac, value = jax.jit(jax.jacrev(lambda x: (y := fn(x), y), has_aux=True))(x)
  dep = np.abs(np.asarray(jac)).sum(axis=(3, 7))
  return value, dep.reshape(x.shape[0], H * W, x.shape[0], H * W)


def _causality_violations(dep):
  """(b, p, c, q) where output (b,p) depends on input (c,q) although c != b or q >= p."""
  batch, n = dep.shape[0], dep.shape[1]
  allowed = np.zeros(dep.shape, bool)
  for b in range(batch):
    allowed[b, :, b, :] = np.tril(np.ones((n, n), bool), k=-1)
  return np.argwhere((dep != 0) & ~allowed)


def test_dependency_check_flags_leaks_and_passes_causal_maps():
  # The check itself must be able to fail: an inclusive prefix sum over raster positions leaks
  # position p into p, mixing the batch leaks tables, an exclusive prefix sum is causal.
  flat = lambda f: lambda x: f(x.reshape(B, H * W, K)).reshape(x.shape)
  inclusive = flat(lambda x: jnp.cumsum(x, axis=1))
  exclusive = flat(lambda x: jnp.cumsum(x, axis=1) - x)
  x = jax.nn.one_hot(_tables(), K, dtype=jnp.float32)
  assert _causality_violations(_dependency(exclusive, x)[1]).size == 0
  leaks = _causality_violations(_dependency(inclusive, x)[1])
  assert {(b, p, c, q) for b, p, c, q in leaks} == {(b, p, b, p) for b in range(B)
                                                    for p in range(H * W)}
  mixed = _causality_violations(_dependency(lambda x: exclusive(x) + exclusive(x)[::-1], x)[1])
  assert mixed.size and all(b != c for b, _, c, _ in mixed)


@pytest.mark.parametrize("overrides", [
    dict(),  # kernel 5, weight norm, 4 heads, 1 residual block per PixelBlock
    # No residual convs: beyond the input stack's reach only attention can carry the past
    # (e.g. (0,0) to (5,6)), so the last check below fails if attention drops out.
    dict(kernel_size=3, weight_norm=False, num_heads=2, num_res_blocks=0),
])
def test_logits_depend_only_on_earlier_positions_of_the_same_table(overrides):
  # Eval mode (dropout off), attention on in both blocks, a batch of two tables.
  model = _make_test_model(**overrides)
  variables = _variables(model)
  indices = _tables()
  x = jax.nn.one_hot(indices, K, dtype=jnp.float32)
  logits, dep = _dependency(lambda x: model.apply(variables, x, train=False), x)
  # Float one-hot input is the same model as integer input.
  np.testing.assert_allclose(logits, _apply(model, variables, indices), rtol=1e-5, atol=1e-5)

  # Exactly zero: the other table, the own position (mask A at the input), every later one.
  assert _causality_violations(dep).size == 0
  for b in range(B):
    own = dep[b, :, b, :]
    for p in range(1, H * W):
      assert own[p, :p].any(), f"position {p} depends on nothing before it"
    for i in range(H):
      for j in range(W):
        # Neighbours the input stack must see: left, above, and above-right (the blind spot
        # of a naively masked PixelCNN).
        for di, dj in [(0, -1), (-1, 0), (-1, 1)]:
          if 0 <= i + di < H and 0 <= j + dj < W:
            assert own[i * W + j, (i + di) * W + j + dj] != 0, (i, j, di, dj)
    # Attention reaches the whole past: the last code depends on every earlier code.
    assert (own[-1, :-1] != 0).all()


def test_shapes_dtypes_and_no_nan_at_the_first_position():
  model = _make_test_model()
  variables = _variables(model)
  logits = _apply(model, variables, _tables())
  assert logits.shape == (B, H, W, K) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  # Position (0,0) sees no code (its attention row is fully masked): same logits for all tables.
  np.testing.assert_array_equal(logits[0, 0, 0], logits[1, 0, 0])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
  indices = _tables()
  variables = _variables(_make_test_model())
  ref = _apply(_make_test_model(), variables, indices)
  model = _make_test_model(dtype=jnp.bfloat16)
  params_shapes = jax.eval_shape(lambda: model.init(_key(1), indices, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params_shapes))
  logits = _apply(model, variables, indices)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(logits, ref, atol=0.1)


def test_eval_is_deterministic_and_train_mode_dropout_is_random():
  model = _make_test_model(dropout=0.1)
  variables = _variables(model)
  indices = _tables()
  eval_a = _apply(model, variables, indices)
  np.testing.assert_array_equal(eval_a, _apply(model, variables, indices, seed=7))
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
  # z_ij = (s_b + i + j) mod K with a random offset s_b per table: z_00 is uniform over K codes,
  # every other code is fixed by its left (or upper) neighbour; the best NLL is log K / (H*W).
  # Training mode with dropout 0.1 (a fresh key per step); a non-finite gradient anywhere,
  # e.g. from the fully masked attention row, would turn the loss into NaN.
  offsets = jax.random.randint(jax.random.key(5), (8, 1, 1), 0, K)
  indices = (offsets + jnp.arange(H)[:, None] + jnp.arange(W)[None, :]) % K
  model = _make_test_model()
  params = _variables(model)["params"]
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, i):
    def loss_fn(params):
      logits = model.apply({"params": params}, indices, train=True,
                           rngs={"dropout": jax.random.fold_in(_key(0), i)})
      return nll_per_table(logits, indices).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for i in range(100):
    params, opt_state, loss = step(params, opt_state, i)
    losses.append(loss)
  losses = np.asarray(losses)
  assert np.isfinite(losses).all()
  assert losses[0] > 0.8 * math.log(K)  # untrained: near-uniform predictions, log K nats
  # Every code but z_00 is fixed by its prefix, so the attainable loss is log K / (H*W) nats;
  # a tenth of the uniform loss leaves room for 100 steps of Adam (~0.05 nats in practice).
  assert losses[-5:].mean() < 0.1 * math.log(K), losses[::10]
