"""Helpers shared by model tests."""
import jax
import numpy as np


def perturb_variables(variables, seed: int, scale: float = 0.1):
  """Every leaf + scale * N(0, 1) noise (NumPy, no per-shape compiles); BatchNorm variances
  kept positive (|v| + 0.5), so no term of a model sits at its initial value."""
  rng = np.random.default_rng(seed)
  noisy = jax.tree.map(lambda v: np.asarray(v) + scale * rng.standard_normal(np.shape(v))
                       .astype(np.float32), variables)
  if "batch_stats" in noisy:
    noisy["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda path, v: np.abs(v) + 0.5 if "var" in jax.tree_util.keystr(path) else v,
        noisy["batch_stats"])
  return noisy
