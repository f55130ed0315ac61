"""Deployment rows: the full anomaly-map pipeline on uint8 images, as a factory would run it.

One part per method (`deploy`: VQ-VAE SSIM / SSIM+AM; `deploy_favae`: FAVAE's merged map;
`deploy_igd`: IGD's Eq. 12 map; `deploy_resample`: latent resampling's Eq. 6 map, whose raster
walk is a Python loop around three networks in every non-vqjax row, see ResamplingPipeline).
Every row takes the same uint8 images and returns the maps of the same weights (configurations.DEPLOY_MAPS names them):
  vqjax jit fp32           `jax.jit(VQVAESSIM.predict)` on uint8 NHWC (scaled inside), NumPy in
                           and out like every other row;
  vqjax exported           the artifact `--mode=export` writes (jax.export, symbolic batch),
                           loaded with `vqjax.exported` (jax + numpy only), maps and scores
                           (`ExportedModel.maps`; the host-side decisions are not timed);
  torch eager / compile    the PyTorch reference (`ReferencePipeline`: uint8 NCHW -> /255 ->
                           the method's `torch_reference` maps), eager, and `torch.compile` fp32;
  ONNX Runtime             that module exported to ONNX (`torch.onnx.export`, dynamo exporter,
                           symbolic batch), CPU execution provider, all graph optimisations;
  OpenVINO                 the same ONNX file, CPU plugin, INFERENCE_PRECISION_HINT f32, and
                           once with the plugin's default hint (bf16 on CPUs with AMX or
                           AVX512-BF16, f32 elsewhere: the record says which it was).
*first call* of the ONNX Runtime / OpenVINO rows starts from a built session (its build time,
and the one-off ONNX export, are recorded apart as session_build_s / onnx_export_s).
Threads: the run's --cpu-threads for every framework (ONNX Runtime intra-op threads, OpenVINO
INFERENCE_NUM_THREADS; 0 = each framework's default). onnx, onnxscript, onnxruntime and openvino
come from `pip install -e ".[deploy-bench]"`; without them those rows record the import error.
"""
from __future__ import annotations

import pathlib
import tempfile
import time
import types

import numpy as np
import torch

from benchmarks import jax_cases, torch_cases
from benchmarks.configurations import DEPLOY_MAPS
from benchmarks.harness import MemoryProbe, Workload


class ReferencePipeline(torch.nn.Module):
  """uint8 images [B,C,H,W] -> the maps `map_names` ([B,H,W] each, a tuple) of reference
  networks in eval mode: maps_fn(*nets, images in [0,1]) -> {name: map}."""

  def __init__(self, nets, maps_fn, map_names):
    super().__init__()
    self.nets = torch.nn.ModuleList([net.eval() for net in nets])
    self.maps_fn, self.map_names = maps_fn, tuple(map_names)

  def forward(self, images_u8):
    maps = self.maps_fn(*self.nets, images_u8.float() / 255.0)
    return tuple(maps[k] for k in self.map_names)


def map_names(part: str) -> tuple[str, ...]:
  return tuple(name for name, _ in DEPLOY_MAPS[part])


def vqvae_pipeline(model, anomaly_cfg) -> ReferencePipeline:
  from benchmarks.torch_reference import anomaly_maps as tam
  return ReferencePipeline([model], lambda m, x: tam.traceable_anomaly_maps(m, x, anomaly_cfg),
                           map_names("deploy"))


def favae_pipeline(model, vgg) -> ReferencePipeline:
  from benchmarks.torch_reference import favae as tfavae
  return ReferencePipeline([model, vgg], tfavae.anomaly_maps, map_names("deploy_favae"))


class _IGDScales(torch.nn.Module):
  """The torch IGD's scales under attribute names torch.export can write back as Python (its
  ModuleDict key 'global' is a keyword: the ONNX exporter's FX code fails on it)."""

  def __init__(self, model):
    super().__init__()
    self.global_scale = model.scales["global"]
    self.local_scale = model.scales["local"] if "local" in model.scales else None

  def as_igd(self):
    scales = {"global": self.global_scale}
    if self.local_scale is not None:
      scales["local"] = self.local_scale
    return types.SimpleNamespace(training=self.training, scales=scales)


def igd_pipeline(model, config) -> ReferencePipeline:
  from benchmarks.torch_reference import igd as tigd
  return ReferencePipeline(
      [_IGDScales(model)], lambda s, x: tigd.anomaly_outputs(s.as_igd(), x, config)["maps"],
      map_names("deploy_igd"))


class _ResamplingEncode(torch.nn.Module):
  """uint8 images [B,C,H,W] -> (codebook indices [B,h,w] int64, direct reconstruction)."""

  def __init__(self, vqvae):
    super().__init__()
    self.vqvae = vqvae.eval()

  def forward(self, images_u8):
    from benchmarks.torch_reference import latent_resampling as tlr
    return tlr.encode(self.vqvae, images_u8.float() / 255.0)


class _ResamplingFinish(torch.nn.Module):
  """(resampled indices, direct reconstruction) -> the bilateral-filtered Eq. 6 map."""

  def __init__(self, vqvae, anomaly_cfg):
    super().__init__()
    self.vqvae, self.anomaly_cfg = vqvae.eval(), anomaly_cfg

  def forward(self, restored, direct):
    from benchmarks.torch_reference import latent_resampling as tlr
    return tlr.residual_map(self.vqvae, restored, direct, self.anomaly_cfg)


class ResamplingPipeline(torch.nn.Module):
  """Latent resampling as a PyTorch deployment runs it: three networks (encode, the PixelSNAIL
  prior, decode + maps) around the raster walk, a Python loop (`torch_reference.
  latent_resampling.resample`). No single graph holds the data-dependent loop, so torch.compile
  compiles the three networks and ONNX gets three files; ONNX Runtime and OpenVINO rows drive
  the same walk from Python (`with_runtime`)."""
  map_names = ("resample",)

  def __init__(self, vqvae, prior, anomaly_cfg, eta: float):
    super().__init__()
    self.encode, self.prior = _ResamplingEncode(vqvae), prior.eval()
    self.finish = _ResamplingFinish(vqvae, anomaly_cfg)
    self.anomaly_cfg, self.eta = anomaly_cfg, float(eta)

  def forward(self, images_u8):
    return self.run_stages(self.encode, self.prior, self.finish, images_u8)

  def run_stages(self, encode, prior, finish, images_u8):
    """The pipeline with any three callables on torch tensors in their places."""
    from benchmarks.torch_reference import latent_resampling as tlr
    indices, direct = encode(images_u8)
    restored = tlr.resample(prior, indices, self.eta,
                            local_constraint=self.anomaly_cfg.local_constraint,
                            interior_only=self.anomaly_cfg.interior_only)
    return (finish(restored, direct),)

  def compiled(self, mode: str):
    """The pipeline with its three networks under torch.compile (the walk stays Python)."""
    encode, prior, finish = (torch.compile(m, mode=mode, dynamic=False)
                             for m in (self.encode, self.prior, self.finish))
    return lambda images_u8: self.run_stages(encode, prior, finish, images_u8)

  def export_onnx(self, folder: pathlib.Path, image_size: int, num_channels: int) -> dict:
    """encode.onnx, prior.onnx, finish.onnx (symbolic batch); {stage: path}."""
    _require("onnx"), _require("onnxscript")
    batch = torch.export.Dim("batch", min=1, max=4096)
    images = torch.zeros((2, num_channels, image_size, image_size), dtype=torch.uint8)
    with torch.no_grad():
      indices, direct = self.encode(images)
    stages = {"encode": (self.encode, (images,), ["images"], ["indices", "direct"]),
              "prior": (self.prior, (indices,), ["tables"], ["logits"]),
              "finish": (self.finish, (indices, direct), ["restored", "direct"], ["resample"])}
    paths = {}
    for name, (module, args, inputs, outputs) in stages.items():
      paths[name] = folder / f"{name}.onnx"
      with torch.no_grad():
        torch.onnx.export(module, args, str(paths[name]), dynamo=True, input_names=inputs,
                          output_names=outputs, dynamic_shapes=tuple({0: batch} for _ in args),
                          verbose=False)
    return paths

  def with_runtime(self, call: dict):
    """The pipeline over runtime sessions: call[stage](*numpy arrays) -> list of numpy arrays."""
    def stage(name):
      return lambda *tensors: [torch.from_numpy(np.asarray(o)) for o in
                               call[name](*(t.numpy() for t in tensors))]
    encode, prior, finish = stage("encode"), stage("prior"), stage("finish")
    return lambda images_u8: tuple(t.numpy() for t in self.run_stages(
        lambda x: tuple(encode(x)), lambda t: prior(t)[0], lambda r, d: finish(r, d)[0],
        torch.from_numpy(images_u8)))


def _require(module: str):
  """Imports a deploy-bench package, or says which extra installs it."""
  import importlib
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(f"{module} is not installed: pip install -e \".[deploy-bench]\"",
                              name=module) from e


def nchw(host_batch_u8: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(host_batch_u8.transpose(0, 3, 1, 2))


def export_onnx(pipeline: ReferencePipeline, image_size: int, num_channels: int,
                path: pathlib.Path) -> dict:
  """Writes the pipeline as ONNX with a symbolic batch; returns facts for the record."""
  _require("onnx"), _require("onnxscript")  # clear errors before torch's exporter runs
  example = torch.zeros((2, num_channels, image_size, image_size), dtype=torch.uint8)
  batch = torch.export.Dim("batch", min=1, max=4096)
  with torch.no_grad():
    torch.onnx.export(pipeline, (example,), str(path), dynamo=True, input_names=["images"],
                      output_names=list(pipeline.map_names), dynamic_shapes=({0: batch},),
                      verbose=False)
  return {"onnx_bytes": path.stat().st_size, "onnx_exporter": "torch.onnx.export(dynamo=True)"}


def _outputs_workload(run, batches, info) -> Workload:
  return Workload(run=run, sync=lambda _output: None, memory=MemoryProbe(),
                  close=batches.clear, info=lambda: dict(info))


def onnxruntime_workload(onnx_path, host_batches_u8, threads: int,
                         names: tuple[str, ...], pipeline=None) -> Workload:
  """onnx_path: one file (the whole pipeline), or {stage: file} for a pipeline with
  `with_runtime` (latent resampling), which then drives the sessions."""
  ort = _require("onnxruntime")
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (one per core)
  options.inter_op_num_threads = 1
  paths = onnx_path if isinstance(onnx_path, dict) else {"pipeline": onnx_path}
  start = time.perf_counter()
  sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
              for k, p in paths.items()}
  build_s = time.perf_counter() - start
  batches = [nchw(b) for b in host_batches_u8]
  if isinstance(onnx_path, dict):
    call = {k: (lambda *arrays, s=s: s.run(None, {i.name: a for i, a in
                                                  zip(s.get_inputs(), arrays)}))
            for k, s in sessions.items()}
    walk = pipeline.with_runtime(call)
    run = lambda i: walk(batches[i % len(batches)])
  else:
    session = sessions["pipeline"]
    name = session.get_inputs()[0].name
    run = lambda i: session.run(list(names), {name: batches[i % len(batches)]})
  info = {"onnxruntime_version": ort.__version__,
          "providers": next(iter(sessions.values())).get_providers(),
          "session_build_s": build_s,
          "intra_op_num_threads": threads, "graph_optimization_level": "ORT_ENABLE_ALL"}
  return _outputs_workload(run, batches, info)


def openvino_workload(onnx_path, host_batches_u8, threads: int,
                      precision_hint: str | None, names: tuple[str, ...],
                      pipeline=None) -> Workload:
  """precision_hint 'f32', or None for the CPU plugin's default. onnx_path as for
  onnxruntime_workload."""
  ov = _require("openvino")
  core = ov.Core()
  config = {"PERFORMANCE_HINT": "LATENCY"}  # one synchronous request, like every other row
  if threads:
    config["INFERENCE_NUM_THREADS"] = threads
  if precision_hint is not None:
    config["INFERENCE_PRECISION_HINT"] = precision_hint
  paths = onnx_path if isinstance(onnx_path, dict) else {"pipeline": onnx_path}
  start = time.perf_counter()
  compiled = {k: core.compile_model(core.read_model(str(p)), "CPU", config)
              for k, p in paths.items()}
  build_s = time.perf_counter() - start
  requests = {k: c.create_infer_request() for k, c in compiled.items()}
  batches = [nchw(b) for b in host_batches_u8]
  if isinstance(onnx_path, dict):
    def stage(k):
      outputs = compiled[k].outputs
      def call(*arrays):
        result = requests[k].infer(dict(enumerate(arrays)))
        return [result[o] for o in outputs]
      return call
    walk = pipeline.with_runtime({k: stage(k) for k in compiled})
    run = lambda i: walk(batches[i % len(batches)])
  else:
    request = requests["pipeline"]
    outputs = [compiled["pipeline"].output(n) for n in names]

    def run(i):
      result = request.infer({0: batches[i % len(batches)]})
      return [result[o] for o in outputs]

  first = next(iter(compiled.values()))
  precision = first.get_property("INFERENCE_PRECISION_HINT")
  info = {"openvino_version": ov.__version__, "session_build_s": build_s,
          "inference_precision": getattr(precision, "get_type_name", lambda: str(precision))(),
          "inference_num_threads": int(first.get_property("INFERENCE_NUM_THREADS")),
          "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}
  return _outputs_workload(run, batches, info)


def torch_workload(variant: str, pipeline: ReferencePipeline, host_batches_u8,
                   compile_mode: str = "default") -> Workload:
  """variant 'eager_fp32' (the reference as written) or 'compile_fp32' (inductor)."""
  fn = pipeline
  if variant == "compile_fp32":
    torch._dynamo.reset()  # a fresh compile per configuration: its time is its own
    fn = (pipeline.compiled(compile_mode) if hasattr(pipeline, "compiled")
          else torch.compile(pipeline, mode=compile_mode, dynamic=False))
  elif variant != "eager_fp32":
    raise ValueError(f"unknown torch deploy variant {variant!r}")
  batches = [torch_cases._to_torch(b, torch.device("cpu"), channels_last=False)
             for b in host_batches_u8]

  def run(i):
    with torch.no_grad():  # not inference_mode: compiled graphs are traced without it
      return fn(batches[i % len(batches)])

  return _outputs_workload(run, batches, {"torch_num_threads": torch.get_num_threads()})


def jit_workload(method, variables, host_batches_u8, device, names: tuple[str, ...],
                 variable_keys: tuple[str, ...]) -> Workload:
  """`jax.jit(method.predict)` compiled ahead of time, called as a deployed program is: NumPy
  uint8 batches in, NumPy maps `names` out (host transfers timed, as every other row's)."""
  import jax
  params = jax.device_put({k: variables[k] for k in variable_keys}, device)
  batches = list(host_batches_u8)
  holder = {}

  def run(i):
    out = holder["compiled"](params, batches[i % len(batches)])
    return {"maps": {k: np.asarray(out["maps"][k]) for k in names}}

  return Workload(run=run, sync=lambda _output: None, memory=MemoryProbe(),
                  compile=jax_cases._aot(jax.jit(method.predict), (params, batches[0]), holder),
                  close=lambda: (holder.clear(), batches.clear()))


def exported_workload(method, method_name: str, variables, image_size: int, num_channels: int,
                      host_batches_u8, folder: pathlib.Path) -> Workload:
  """Exports (vqjax.predict.export_model) and loads (vqjax.exported) the pipeline, as a user
  would with --mode=export, then times ExportedModel.maps on uint8 NHWC batches."""
  from vqjax import exported as vqjax_exported
  from vqjax.predict import PREPROCESSING, TrainedModel, export_model
  info = {"method": method_name, "variants": list(method.variants), "image_size": image_size,
          "num_channels": num_channels, "preprocessing": PREPROCESSING,
          "image_score": "max", "method_scores": [], "thresholds": None,
          "map_quantiles": None, "category": "benchmark", "dataset": "random", "steps": 0}
  export_model(TrainedModel(method=method, variables=variables, info=info, workdir=folder),
               folder / "export", platforms=("cpu",))
  model = vqjax_exported.load_exported(folder / "export")
  batches = list(host_batches_u8)
  run = lambda i: model.maps(batches[i % len(batches)])
  size = sum(p.stat().st_size for p in (folder / "export").iterdir())
  return _outputs_workload(run, batches, {"export_bytes": size})


def comparable(variant: str, output, names: tuple[str, ...]) -> dict:
  """A row's output -> {map name: float32 [B,H,W]} for the agreement check."""
  if variant.startswith("vqjax"):
    return {k: np.asarray(output["maps"][k], np.float32) for k in names}
  return {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v, np.float32)
          for k, v in zip(names, output)}


def agreement(values: dict, reference: dict, part: str) -> dict:
  """max |difference| of each map from vqjax jit's: absolute, or relative to the reference
  map's largest value for maps without a fixed scale (SSIM+AM, FAVAE's log-densities)."""
  out = {}
  for name, kind in DEPLOY_MAPS[part]:
    diff = float(np.max(np.abs(values[name] - reference[name])))
    if kind == "rel":
      diff /= float(np.max(np.abs(reference[name]))) or 1.0
    out[f"max_{kind}_diff_{name}"] = diff
  return out


class DeployModels:
  """What one part's deploy rows share: the torch pipeline, its ONNX file (exported once per
  run) and a temporary folder for the vqjax export."""

  def __init__(self, pipeline: ReferencePipeline, image_size: int, num_channels: int):
    self.pipeline = pipeline
    self.image_size, self.num_channels = image_size, num_channels
    self._tmp = tempfile.TemporaryDirectory(prefix="vqjax-deploy-")
    self.folder = pathlib.Path(self._tmp.name)
    self._onnx = None
    self.onnx_info: dict = {}

  def onnx_path(self) -> pathlib.Path:
    """The pipeline's ONNX file, exported on first use; a failed export is tried once and its
    error given to every ONNX row."""
    if isinstance(self._onnx, Exception):
      raise self._onnx
    if self._onnx is None:
      path = self.folder / "reference.onnx"
      start = time.perf_counter()
      try:
        if hasattr(self.pipeline, "export_onnx"):  # several graphs around a Python loop
          path = self.pipeline.export_onnx(self.folder, self.image_size, self.num_channels)
          self.onnx_info = {"onnx_bytes": sum(p.stat().st_size for p in path.values()),
                            "onnx_files": sorted(path),
                            "onnx_exporter": "torch.onnx.export(dynamo=True)"}
        else:
          self.onnx_info = export_onnx(self.pipeline, self.image_size, self.num_channels, path)
      except Exception as e:  # noqa: BLE001 - recorded in each ONNX row
        self._onnx = e
        raise
      self.onnx_info["onnx_export_s"] = time.perf_counter() - start
      self._onnx = path
    return self._onnx
