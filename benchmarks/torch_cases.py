"""PyTorch workloads on the reference model (benchmarks/torch_reference), same weights as vqjax.

Variants:
  eager fp32                      the reference as written: NCHW, `anomaly_maps`, float32;
  eager bf16 AMP + channels_last  encoder / decoder under bf16 autocast, channels_last
                                  weights and inputs; quantiser and maps in float32 (the
                                  split vqjax's bf16 model makes, see `mixed_forward`);
  torch.compile bf16 + CL         the previous pipeline through torch.compile (inductor).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from benchmarks.harness import MemoryProbe, Workload
from benchmarks.torch_reference import anomaly_maps as tam
from benchmarks.torch_reference.convert import load_flax_variables
from benchmarks.torch_reference.train import make_train_step, mixed_forward
from benchmarks.torch_reference.vqvae import VQVAE


def select_device(kind: str) -> torch.device:
  return torch.device("cuda" if kind == "gpu" else "cpu")


def set_precision(device: torch.device, fp32_mode: str) -> None:
  """Explicit float32 settings: cuDNN convs TF32 iff fp32_mode == 'tf32'; matmuls never.

  The one float32 matmul (nearest-code distances) runs at full precision in vqjax
  (Precision.HIGHEST), so torch's matmul TF32 stays off in both modes.
  """
  torch.backends.cudnn.allow_tf32 = fp32_mode == "tf32"
  torch.backends.cuda.matmul.allow_tf32 = False
  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True  # autotuned conv algorithms, as XLA autotunes


def set_compile_caches(enabled: bool) -> str:
  """Off by default: inductor's on-disk and in-memory caches would turn a later run's
  torch.compile time into a cache lookup (seen: 18 s -> 7 s on the CPU), while JAX compiles
  cold (no persistent compilation cache unless one is configured; recorded)."""
  import torch._inductor.config as inductor_config
  if not hasattr(inductor_config, "force_disable_caches"):
    return "unknown (no torch._inductor.config.force_disable_caches in this torch)"
  inductor_config.force_disable_caches = not enabled
  return "enabled" if enabled else "disabled (force_disable_caches)"


def precision_settings() -> dict:
  """What torch will do with float32 (recorded in the results)."""
  getters = {
      "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
      "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
      "float32_matmul_precision": torch.get_float32_matmul_precision,
      "cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
      "num_threads": torch.get_num_threads,
      # torch >= 2.9's newer per-backend API, when present
      "cudnn.fp32_precision": lambda: torch.backends.cudnn.fp32_precision,
      "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
  }
  out = {}
  for name, get in getters.items():
    try:
      out[name] = get()
    except (AttributeError, RuntimeError) as exc:  # absent, or refused by this version
      out[name] = None if isinstance(exc, AttributeError) else f"unreadable: {exc}"
  return {k: v for k, v in out.items() if v is not None}


class TorchMemoryProbe(MemoryProbe):
  """torch.cuda.max_memory_allocated since a reset just before this configuration's first
  call (weights and its input batches included); nothing on the CPU."""

  def __init__(self, device: torch.device):
    self.device = device

  def reset(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats(self.device)

  def read(self) -> dict:
    if self.device.type != "cuda":
      return super().read()
    return {"peak_bytes": int(torch.cuda.max_memory_allocated(self.device)),
            "peak_note": "torch.cuda.max_memory_allocated since reset (this configuration)"}


def _sync_fn(device: torch.device):
  if device.type == "cuda":
    return lambda _output: torch.cuda.synchronize(device)
  return lambda _output: None  # CPU eager ops return when done


def base_model(config, variables, device: torch.device) -> VQVAE:
  """The reference VQ-VAE with vqjax's variables copied in, on `device`."""
  model = VQVAE.from_config(config.model, out_channels=3)
  load_flax_variables(model, variables)  # raises on any mismatch
  return model.to(device)


def _to_torch(host_batch: np.ndarray, device, channels_last: bool) -> torch.Tensor:
  """NHWC NumPy -> NCHW tensor on device (channels_last memory format if asked)."""
  t = torch.from_numpy(np.ascontiguousarray(host_batch.transpose(0, 3, 1, 2))).to(device)
  return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _model_copy(model: VQVAE, channels_last: bool) -> VQVAE:
  copied = copy.deepcopy(model)
  return copied.to(memory_format=torch.channels_last) if channels_last else copied


def mixed_anomaly_maps(model: VQVAE, images: torch.Tensor, anomaly_cfg,
                       autocast_dtype: torch.dtype) -> dict:
  """`torch_reference.anomaly_maps` with the network under autocast (see mixed_forward);
  continuous-Bernoulli mean, SSIM, dilation and upsampling stay float32, as in vqjax."""
  a = anomaly_cfg
  logits, aux = mixed_forward(model, images, autocast_dtype)
  reconstructions = tam.continuous_bernoulli_mean(logits)
  sm = tam.ssim_anomaly_map(images, reconstructions, channel_reduction=a.ssim_channel_reduction,
                            window=a.ssim_window, window_size=a.ssim_window_size,
                            sigma=a.ssim_sigma, k1=a.ssim_k1, k2=a.ssim_k2, data_range=1.0,
                            sample_covariance=a.ssim_sample_covariance)
  sm = tam.grey_dilation(sm, a.ssim_dilation)
  height, width = images.shape[2:]
  am = tam.grey_dilation(tam.resize_maps(aux["alignment"], height, width, method=a.am_upsample),
                         a.am_dilation)
  return dict(reconstructions=reconstructions, ssim=sm, ssim_am=sm * am)


def inference(variant: str, model: VQVAE, anomaly_cfg, host_batches, device, *,
              compile_mode: str = "default") -> Workload:
  """variant: 'eager_fp32' | 'eager_bf16_cl' | 'compile_bf16_cl'."""
  channels_last = variant != "eager_fp32"
  net = _model_copy(model, channels_last).eval()
  batches = [_to_torch(b, device, channels_last) for b in host_batches]
  if variant == "eager_fp32":
    fn = lambda x: tam.anomaly_maps(net, x, anomaly_cfg)  # the reference, untouched
  else:
    def pipeline(x):
      return mixed_anomaly_maps(net, x, anomaly_cfg, torch.bfloat16)
    if variant == "compile_bf16_cl":
      torch._dynamo.reset()  # a fresh compile per configuration: its time is its own
      pipeline = torch.compile(pipeline, mode=compile_mode, dynamic=False)
    elif variant != "eager_bf16_cl":
      raise ValueError(f"unknown torch inference variant {variant!r}")
    fn = pipeline

  def run(i):
    with torch.inference_mode():
      return fn(batches[i % len(batches)])

  return Workload(run=run, sync=_sync_fn(device), memory=TorchMemoryProbe(device),
                  close=batches.clear)


def train(variant: str, model: VQVAE, config, host_batches_u8, device) -> Workload:
  """variant: 'eager_fp32' | 'eager_bf16_cl' (AMP bf16 autocast + channels_last)."""
  if variant not in ("eager_fp32", "eager_bf16_cl"):
    raise ValueError(f"unknown torch train variant {variant!r}")
  channels_last = variant == "eager_bf16_cl"
  net = _model_copy(model, channels_last)
  step = make_train_step(net, beta=config.loss.beta, learning_rate=config.train.learning_rate,
                         dead_code_threshold=config.loss.dead_code_threshold,
                         autocast_dtype=torch.bfloat16 if channels_last else None)
  batches = [_to_torch(b, device, channels_last) for b in host_batches_u8]
  return Workload(run=lambda i: step(batches[i % len(batches)]), sync=_sync_fn(device),
                  memory=TorchMemoryProbe(device), close=batches.clear)


def ssim(ssim_kwargs: dict, host_batches, device) -> Workload:
  """The reference `ssim_map(x, y)` (depthwise conv), float32 NCHW; pair i = (i, i+1)."""
  batches = [_to_torch(b, device, channels_last=False) for b in host_batches]
  n = len(batches)

  def run(i):
    with torch.inference_mode():
      return tam.ssim_map(batches[i % n], batches[(i + 1) % n], **ssim_kwargs)

  return Workload(run=run, sync=_sync_fn(device), memory=TorchMemoryProbe(device),
                  close=batches.clear)


def favae_models(method, variables, device: torch.device):
  """(torch FAVAE, torch VGG16 features) with vqjax's FAVAE variables copied in."""
  from benchmarks.torch_reference import favae as tfavae
  from benchmarks.torch_reference.convert import favae_parameter_mapping, vgg16_parameter_mapping
  m = method.model
  model = tfavae.FAVAE(width=m.width, bottleneck=m.bottleneck, latent_dim=m.latent_dim,
                       bottom_size=m.bottom_size, in_channels=m.out_channels)
  load_flax_variables(model, {k: variables[k] for k in ("params", "batch_stats")},
                      favae_parameter_mapping)
  vgg = load_flax_variables(tfavae.vgg16_features(), variables["frozen"], vgg16_parameter_mapping)
  return model.to(device).eval(), vgg.to(device).eval()


def _inference_workload(variant: str, make_fn, models, host_batches, device,
                        compile_mode: str) -> Workload:
  """An eager / AMP + channels_last / torch.compile workload of make_fn(models copied into
  the variant's memory format, autocast dtype or None) applied to each batch."""
  channels_last = variant != "eager_fp32"
  copies = [_model_copy(m, channels_last).eval() for m in models]
  batches = [_to_torch(b, device, channels_last) for b in host_batches]
  fn = make_fn(*copies, None if variant == "eager_fp32" else torch.bfloat16)
  if variant == "compile_bf16_cl":
    torch._dynamo.reset()
    fn = torch.compile(fn, mode=compile_mode, dynamic=False)

  def run(i):
    with torch.inference_mode():
      return fn(batches[i % len(batches)])

  return Workload(run=run, sync=_sync_fn(device), memory=TorchMemoryProbe(device),
                  close=batches.clear)


def favae_inference(variant: str, models, host_batches, device, *,
                    compile_mode: str = "default") -> Workload:
  """variant: 'eager_fp32' | 'eager_bf16_cl' | 'compile_bf16_cl' (as `inference`)."""
  from benchmarks.torch_reference import favae as tfavae
  if variant not in ("eager_fp32", "eager_bf16_cl", "compile_bf16_cl"):
    raise ValueError(f"unknown torch FAVAE variant {variant!r}")
  make_fn = lambda model, vgg, autocast: (
      lambda x: tfavae.anomaly_maps(model, vgg, x, autocast_dtype=autocast))
  return _inference_workload(variant, make_fn, models, host_batches, device, compile_mode)


def igd_models(config, variables, device: torch.device):
  """The torch IGD twin of `config` with vqjax's IGD variables copied in (eval mode)."""
  from benchmarks.torch_reference import igd as tigd
  from benchmarks.torch_reference.convert import igd_parameter_mapping
  model = load_flax_variables(tigd.IGD.from_config(config), variables, igd_parameter_mapping)
  return model.to(device).eval()


def igd_inference(variant: str, model, config, host_batches, device, *,
                  compile_mode: str = "default") -> Workload:
  """variant: 'eager_fp32' | 'eager_bf16_cl' | 'compile_bf16_cl' (as `inference`): the
  twin's `anomaly_outputs`, autoencoders under bf16 autocast in the AMP variants."""
  from benchmarks.torch_reference import igd as tigd
  if variant not in ("eager_fp32", "eager_bf16_cl", "compile_bf16_cl"):
    raise ValueError(f"unknown torch IGD variant {variant!r}")
  make_fn = lambda net, autocast: (
      lambda x: tigd.anomaly_outputs(net, x, config, autocast_dtype=autocast))
  return _inference_workload(variant, make_fn, (model,), host_batches, device, compile_mode)


def maps_to_numpy(output) -> dict:
  """Maps of a torch pipeline output -> NumPy [B,H,W] float32 (for the agreement check)."""
  return {k: output[k].float().cpu().numpy() for k in ("ssim", "ssim_am")}


def cuda_info() -> dict:
  if not torch.cuda.is_available():
    return {}
  props = torch.cuda.get_device_properties(0)
  return {"torch_cuda_device": torch.cuda.get_device_name(0),
          "torch_cuda_capability": f"{props.major}.{props.minor}",
          "torch_cuda_version": torch.version.cuda,
          "cudnn_version": torch.backends.cudnn.version(),
          "total_memory_bytes": int(props.total_memory)}

