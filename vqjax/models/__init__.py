"""Flax modules only: they compute, never read files, log or see configs."""
import jax.numpy as jnp

# Config name -> compute dtype of convolutions (parameters and BatchNorm stay float32).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
