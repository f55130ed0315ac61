"""vqjax workloads: the jitted anomaly-map pipeline, the jitted train steps, the SSIM map.

Each builder places its own copy of the variables and of the input batches on the device
(committed arrays, so every jitted call runs there) and compiles ahead of time, so the
compile is timed apart from the first run.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import MemoryProbe, Workload
from vqjax.methods.vqvae_ssim import VQVAESSIM
from vqjax.ops.latent_resampling import code_probabilities
from vqjax.ops.ssim import ssim_map
from vqjax.optimizers import make_optimizer
from vqjax.train import TrainState, make_train_step


def select_device(kind: str) -> jax.Device:
  """kind 'gpu' or 'cpu' -> the first JAX device of that platform."""
  return jax.devices(kind)[0]


def gpu_visible() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:  # no CUDA backend in this jaxlib / no GPU
    return False


def method_for(config, dtype: str, num_channels: int) -> VQVAESSIM:
  """The VQ-VAE SSIM method of `config` with model.dtype = dtype ('float32' | 'bfloat16').

  Pinned to what the PyTorch twin does: continuous-Bernoulli likelihood, no augmentation.
  """
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  if "likelihood" in config.loss:
    config.loss.likelihood = "continuous_bernoulli"
  if "augment" in config:
    config.augment.policy = "none"
  return VQVAESSIM.from_config(config, num_channels=num_channels)


def random_variables(method, image_shape, seed: int = 0) -> dict:
  """Host (NumPy) variables laid out as `method.init` makes them, filled by `random_fill`.
  Cheaper than Flax's init (seconds of compile on a small CPU), and timings do not depend on
  the values."""
  shapes = jax.eval_shape(method.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return random_fill(shapes, seed)


def random_fill(shapes, seed: int = 0) -> dict:
  """A tree of ShapeDtypeStructs -> NumPy float32 values: kernels N(0, 1/fan_in), zero biases,
  BatchNorm and weight-norm scales 1, codebook N(0, 1), vq_stats as initialised."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    # flax's WeightNorm keys its scales by path: "Conv_0/kernel/scale".
    name = path[-1].key.rpartition("/")[2]
    if name == "kernel":
      value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == "codebook":
      value = rng.standard_normal(leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "usage":
      value = np.full(leaf.shape, 1.0 / leaf.shape[0])
    else:  # biases, BatchNorm means, candidate codes, log-variances
      value = np.zeros(leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


class JaxMemoryProbe(MemoryProbe):
  """`peak_bytes_in_use` of the device allocator (GPU only).

  It is process-wide and never goes down: the value after a configuration is the highest
  use so far, its own only when this configuration raised it. The note says which.
  """

  def __init__(self, device: jax.Device):
    self.device = device
    self.before = None

  def _stats(self):
    return self.device.memory_stats() if self.device.platform != "cpu" else None

  def reset(self):
    stats = self._stats()
    self.before = stats.get("peak_bytes_in_use") if stats else None

  def read(self) -> dict:
    stats = self._stats()
    if not stats or "peak_bytes_in_use" not in stats:
      return super().read()
    peak = int(stats["peak_bytes_in_use"])
    raised = self.before is None or peak > self.before
    note = ("process-wide peak, raised by this configuration" if raised else
            "process-wide peak, not raised by this configuration (its own peak is <= this)")
    return {"peak_bytes": peak, "peak_note": note, "peak_is_upper_bound": not raised}


def _program_info(compiled) -> dict:
  """XLA's own byte counts for one compiled program (exact per configuration)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return {}
  if m is None:
    return {}
  parts = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
               temp=m.temp_size_in_bytes, alias=m.alias_size_in_bytes)
  total = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
  return {"xla_program_bytes": int(total), "xla_memory_analysis": parts}


def _aot(jitted, args, holder: dict):
  """Returns compile() for the Workload: lowers and compiles, keeps the executable."""

  def compile_now() -> float:
    start = time.perf_counter()
    holder["compiled"] = jitted.lower(*args).compile()
    return time.perf_counter() - start

  return compile_now


# The variable collections each method's predict takes.
VQVAE_COLLECTIONS = ("params", "batch_stats")
FAVAE_COLLECTIONS = ("params", "batch_stats", "frozen")
IGD_COLLECTIONS = ("params", "model_state", "gsvdd")


def inference(method, variables, host_batches, device,
              collections=VQVAE_COLLECTIONS) -> Workload:
  """method.predict as one jitted program (VQ-VAE SSIM: model -> reconstruction -> SSIM and
  SSIM+AM maps; FAVAE, with FAVAE_COLLECTIONS: VAE + VGG16 -> log-density maps; IGD, with
  IGD_COLLECTIONS: autoencoders -> MS-SSIM / GSVDD maps)."""
  params = jax.device_put({k: variables[k] for k in collections}, device)
  batches = [jax.device_put(b, device) for b in host_batches]
  holder = {}
  return Workload(
      run=lambda i: holder["compiled"](params, batches[i % len(batches)]),
      sync=jax.block_until_ready,
      compile=_aot(jax.jit(method.predict), (params, batches[0]), holder),
      memory=JaxMemoryProbe(device),
      close=lambda: (holder.clear(), batches.clear()),
      info=lambda: _program_info(holder.get("compiled")))


def _donated_step_workload(step, state, host_batches_u8, device) -> Workload:
  """A jitted step(state, batch, key) -> (state, metrics) with the state donated and held
  between calls; compiled ahead of time on the first batch."""
  batches = [jax.device_put(b, device) for b in host_batches_u8]
  key = jax.device_put(jax.random.key(0), device)
  jitted = jax.jit(step, donate_argnums=(0,))
  holder = {"state": state}

  def run(i):
    holder["state"], metrics = holder["compiled"](holder["state"], batches[i % len(batches)], key)
    return holder["state"], metrics

  return Workload(
      run=run, sync=jax.block_until_ready,
      compile=_aot(jitted, (state, batches[0], key), holder),
      memory=JaxMemoryProbe(device),
      close=lambda: (holder.clear(), batches.clear()),
      info=lambda: _program_info(holder.get("compiled")))


def train(method: VQVAESSIM, config, variables, host_batches_u8, device) -> Workload:
  """vqjax.train's step: loss, grads, Adam, post_update; state donated, one jitted program.

  Single device, so no shardings are passed (train.py's replicated / batch-sharded
  shardings over a 1-device mesh are the same placement).
  """
  optimizer = make_optimizer(config.train, config.train.num_steps)
  variables = jax.device_put(variables, device)
  params = variables["params"]
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), device), params=params,
                     model_state={k: v for k, v in variables.items() if k != "params"},
                     opt_state=jax.jit(optimizer.init)(params))
  return _donated_step_workload(make_train_step(method, optimizer), state, host_batches_u8,
                                device)


def ssim_kwargs(anomaly_cfg) -> dict:
  a = anomaly_cfg
  return dict(window=a.ssim_window, window_size=a.ssim_window_size, sigma=a.ssim_sigma,
              k1=a.ssim_k1, k2=a.ssim_k2, data_range=1.0,
              sample_covariance=a.ssim_sample_covariance)


def ssim(anomaly_cfg, host_batches, device) -> Workload:
  """ssim_map(x, y) alone, jitted; pair i = (batch i, batch i+1)."""
  batches = [jax.device_put(b, device) for b in host_batches]
  fn = jax.jit(functools.partial(ssim_map, **ssim_kwargs(anomaly_cfg)))
  holder = {}
  n = len(batches)
  return Workload(
      run=lambda i: holder["compiled"](batches[i % n], batches[(i + 1) % n]),
      sync=jax.block_until_ready,
      compile=_aot(fn, (batches[0], batches[1 % n]), holder),
      memory=JaxMemoryProbe(device),
      close=lambda: (holder.clear(), batches.clear()),
      info=lambda: _program_info(holder.get("compiled")))


def favae_method(config, dtype: str, num_channels: int):
  """The FAVAE method of `config` with model.dtype = dtype, VGG16 feature spaces, one
  model-input-sized image per example (no tiling)."""
  from vqjax.methods.favae import FAVAEMethod
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  config.model.feature_extractor = "vgg16"
  config.data.texture_image_size = None
  return FAVAEMethod.from_config(config, num_channels=num_channels)


def favae_variables(method, image_shape, seed: int = 0) -> dict:
  """Host variables for FAVAE's predict: the model's (filled like random_variables) and a
  full 13-conv VGG16 under 'frozen' (random: timings do not depend on the values)."""
  from vqjax.models.backbones import VGG16
  variables = random_variables(method, image_shape, seed)
  shapes = jax.eval_shape(VGG16(outputs=(30,)).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *image_shape[:2], 3), jnp.float32))
  variables["frozen"] = random_fill(shapes, seed + 1)
  return variables


def igd_method(config, dtype: str, num_channels: int):
  """The IGD method of `config` (global and, with model.local, local models) with
  model.dtype = dtype."""
  from vqjax.methods.igd import IGDMethod
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  return IGDMethod.from_config(config, num_channels=num_channels)


def igd_variables(method, seed: int = 0) -> dict:
  """Host variables for IGD's predict: parameters and BatchNorm statistics filled by
  `random_fill`, GSVDD centres N(0, 1) and sigma^2 = d_z (1 - h neither 0 nor 1)."""
  params, model_state = random_fill(jax.eval_shape(method.init_variables, jax.random.key(0)),
                                    seed)
  rng = np.random.default_rng(seed + 1)
  latent = method.autoencoders[0].latent_dim
  gsvdd = {s: {"center": rng.standard_normal(latent).astype(np.float32),
               "sigma2": np.float32(latent)} for s in method.scales}
  return {"params": params, "model_state": model_state, "gsvdd": gsvdd}


def method_case(name: str, config, num_channels: int, seed: int = 0,
                dtypes: tuple[str, ...] = ("float32",)) -> tuple[dict, dict]:
  """A benchmarked method of `config` ('vqvae_ssim' | 'favae' | 'igd'): {dtype: method} and one
  set of host variables (random, as the method's *_variables makes them) shared by all dtypes
  (parameters stay float32 whatever the compute dtype)."""
  build = {"vqvae_ssim": method_for, "favae": favae_method, "igd": igd_method}[name]
  methods = {dtype: build(config, dtype, num_channels) for dtype in dtypes}
  method = methods[dtypes[0]]
  image_shape = (config.data.image_size, config.data.image_size, num_channels)
  if name == "favae":
    variables = favae_variables(method, image_shape, seed)
  elif name == "igd":
    variables = igd_variables(method, seed)
  else:
    variables = random_variables(method, image_shape, seed)
  return methods, variables


RESAMPLING_COLLECTIONS = ("vqvae", "prior", "eta")


def resampling_method(config, num_channels: int):
  """The latent-resampling method of `config` (VQ-VAE + PixelSNAIL prior), float32."""
  from vqjax.methods.latent_resampling import LatentResampling
  return LatentResampling.from_config(config, num_channels=num_channels)


def resampling_variables(method, image_shape, seed: int = 0,
                         changed_fraction: float = 0.1) -> dict:
  """Host variables for latent resampling's predict: the VQ-VAE's and the prior's filled by
  `random_fill`, and an eta at the `changed_fraction` quantile of the present codes'
  probabilities on random images, so that the walk changes a realistic share of the codes (a
  random prior gives every code ~1/K: any eta above that would change almost all of them, one
  pass each)."""
  vq = random_variables(method.vq, image_shape, seed)
  images = np.random.default_rng(seed + 2).integers(0, 256, (8, *image_shape), np.uint8)
  tables = method.vq.encode_indices(vq, images)
  prior = random_fill(jax.eval_shape(method.prior.init, jax.random.key(0), tables), seed + 1)
  probs, _ = code_probabilities(method.prior.logits(prior, tables), tables)
  eta = np.float32(np.quantile(np.asarray(probs), changed_fraction))
  return {"vqvae": vq, "prior": prior, "eta": eta}


def igd_train(method, config, variables, host_batches_u8, device) -> Workload:
  """IGDMethod.main_program's step, jitted with the state donated: both scales' autoencoder
  and critic losses (Eq. 5-8), gradients, the two Adam updates (the E-step hook is not part
  of it). distilled=None: the encoder trains too (a distilled one is frozen, so fewer
  parameters train). Weights: `variables` (igd_variables, as the igd part's)."""
  from vqjax.methods.igd import IGDState
  program = method.main_program(config.train, config.train.num_steps, em_every=1,
                                distilled=None)
  # program.init's optimizer state alone: XLA drops the unused Flax init (a long CPU compile).
  opt_state = jax.jit(lambda rng, example: program.init(rng, example).opt_state)(
      jax.random.key(0), host_batches_u8[0][:1])
  state = jax.device_put(IGDState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      model_state=variables["model_state"], opt_state=opt_state, gsvdd=variables["gsvdd"]),
      device)
  return _donated_step_workload(program.step, state, host_batches_u8, device)
