"""Builds, times and reports every configuration of one `python -m benchmarks.run` call.

Order: for each part, for each batch size, each variant in turn (VARIANTS order: vqjax
first, then torch); each configuration gets its own input batches on the device and is
freed before the next, so memory peaks and caches are its own as far as the frameworks allow.
"""
from __future__ import annotations

import argparse
import gc
import sys
import warnings

import jax
import numpy as np
import torch

from benchmarks import deploy_cases, environment, harness, jax_cases, report, torch_cases
from benchmarks.configurations import (DEPLOY_PARTS, JAX_PRECISION, PARTS, PRESETS,
                                      TRAIN_PARTS, UINT8_PARTS, VARIANTS)
from configs import mvtec_favae, mvtec_igd, mvtec_vq, mvtec_vq_resample
from vqjax.report import write_json, write_text

NUM_CHANNELS = 3  # RGB, as MVTec-AD


def choose_device(requested: str) -> str:
  """'gpu' only when both JAX and torch see a CUDA GPU: both must run on the same device."""
  jax_gpu, torch_gpu = jax_cases.gpu_visible(), torch.cuda.is_available()
  if requested == "gpu" and not (jax_gpu and torch_gpu):
    raise SystemExit(f"--device gpu needs a GPU visible to both frameworks "
                     f"(JAX sees one: {jax_gpu}, torch sees one: {torch_gpu})")
  if requested != "auto":
    return requested
  if jax_gpu != torch_gpu:
    print(f"warning: only {'JAX' if jax_gpu else 'torch'} sees a GPU; running on the CPU",
          file=sys.stderr)
  return "gpu" if jax_gpu and torch_gpu else "cpu"


def resolve_settings(args: argparse.Namespace, device: str, runtime: dict) -> dict:
  """Preset defaults overridden by the flags given."""
  preset = args.preset or ("paper" if device == "gpu" else "cpu")
  defaults = PRESETS[preset]
  return dict(preset=preset, config_preset=defaults["config"], device=device,
              batches=list(args.batches or defaults["batches"]),
              train_batches=list(args.train_batches or defaults["train_batches"]),
              repeats=args.repeats or defaults["repeats"],
              warmup=defaults["warmup"] if args.warmup is None else args.warmup,
              parts=list(args.parts), torch_compile=args.torch_compile,
              compile_budget_s=args.compile_budget_s, compile_mode=args.compile_mode,
              fp32_precision=args.fp32_precision, seed=args.seed,
              torch_compile_caches=torch_cases.set_compile_caches(args.compile_caches),
              jax_compilation_cache_dir=jax.config.jax_compilation_cache_dir,
              input_batches=harness.NUM_INPUT_BATCHES, **runtime)


def host_batches(part: str, batch: int, image_size: int, seed: int) -> list[np.ndarray]:
  """NUM_INPUT_BATCHES distinct NHWC batches: float32 in [0,1], uint8 for the UINT8_PARTS
  (every train step takes uint8; so do the deployment rows). The same data goes to every
  framework."""
  rng = np.random.default_rng([seed, PARTS.index(part), batch])
  shape = (batch, image_size, image_size, NUM_CHANNELS)
  if part in UINT8_PARTS:
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(harness.NUM_INPUT_BATCHES)]
  return [rng.random(shape, dtype=np.float32) for _ in range(harness.NUM_INPUT_BATCHES)]


def comparable(part: str, variant: str, output):
  """A first call's output -> NumPy values comparable across frameworks."""
  is_jax = variant.startswith("vqjax")
  if part in DEPLOY_PARTS:
    return deploy_cases.comparable(variant, output, deploy_cases.map_names(part))
  if part in TRAIN_PARTS:
    return float(output[1]["loss"] if is_jax else output)  # (state, metrics) | loss
  if part == "ssim":
    out = np.asarray(output) if is_jax else output.cpu().numpy().transpose(0, 2, 3, 1)
    return out.astype(np.float32)
  if part == "favae":
    out = output["maps"]["favae"] if is_jax else output["favae"].float().cpu()
    return np.asarray(out, np.float32)
  if part == "igd":  # the main variant's map (Eq. 12)
    out = output["maps"]["igd"]
    return np.asarray(out if is_jax else out.float().cpu(), np.float32)
  if is_jax:
    return {k: np.asarray(output["maps"][k], np.float32) for k in ("ssim", "ssim_am")}
  return torch_cases.maps_to_numpy(output)


class Bench:
  """Every configuration of one run, and what they share (weights, devices, compile budget)."""

  def __init__(self, settings: dict):
    self.s = settings
    self.config = mvtec_vq.get_config(settings["config_preset"])
    self.image_size = self.config.data.image_size
    self.jax_device = jax_cases.select_device(settings["device"])
    self.torch_device = torch_cases.select_device(settings["device"])
    # One set of weights for everyone: vqjax variables, copied into the torch model.
    self.methods, self.variables = self._method_case("vqvae_ssim", self.config)
    torch.manual_seed(settings["seed"])
    self.torch_model = torch_cases.base_model(self.config, self.variables, self.torch_device)
    self.compile_seconds = 0.0
    self.reference = {}  # part -> vqjax fp32 values on the first input batch
    self._favae = None  # built on first use: (methods, variables, torch models, image size)
    self._igd = None  # the same for IGD
    self._resampling = None  # the same for latent resampling
    self._deploy = {}  # deploy part -> deploy_cases.DeployModels, built on first use

  def _method_case(self, name: str, config) -> tuple[dict, dict]:
    """{'fp32' | 'bf16': method} and their shared random host variables."""
    precisions = {"fp32": "float32", "bf16": "bfloat16"}
    methods, variables = jax_cases.method_case(name, config, NUM_CHANNELS, self.s["seed"],
                                               tuple(precisions.values()))
    return {p: methods[dtype] for p, dtype in precisions.items()}, variables

  def favae(self):
    """FAVAE's methods, variables and torch twins (configs/mvtec_favae.py, same preset)."""
    if self._favae is None:
      config = mvtec_favae.get_config(self.s["config_preset"])
      methods, variables = self._method_case("favae", config)
      models = torch_cases.favae_models(methods["fp32"], variables, self.torch_device)
      self._favae = dict(methods=methods, variables=variables, models=models,
                         image_size=config.data.image_size, config=config)
    return self._favae

  def igd(self):
    """IGD's methods, variables and torch twin (configs/mvtec_igd.py, same preset)."""
    if self._igd is None:
      config = mvtec_igd.get_config(self.s["config_preset"])
      methods, variables = self._method_case("igd", config)
      model = torch_cases.igd_models(config, variables, self.torch_device)
      self._igd = dict(methods=methods, variables=variables, model=model,
                       image_size=config.data.image_size, config=config)
    return self._igd

  def resampling(self):
    """Latent resampling's method, variables (eta from the random prior, see
    jax_cases.resampling_variables) and torch twins (configs/mvtec_vq_resample.py)."""
    if self._resampling is None:
      from benchmarks.torch_reference import latent_resampling as tlr
      config = mvtec_vq_resample.get_config(self.s["config_preset"])
      size = config.data.image_size
      method = jax_cases.resampling_method(config, NUM_CHANNELS)
      variables = jax_cases.resampling_variables(method, (size, size, NUM_CHANNELS),
                                                 self.s["seed"])
      vqvae = torch_cases.base_model(config, variables["vqvae"], torch.device("cpu"))
      prior = tlr.PixelSNAIL.from_config(config.prior, config.model.num_codes,
                                         variables["prior"]["params"])
      self._resampling = dict(method=method, variables=variables, vqvae=vqvae, prior=prior,
                              image_size=size, config=config)
    return self._resampling

  def deploy(self, part: str) -> deploy_cases.DeployModels:
    if part not in self._deploy:
      if part == "deploy":
        pipeline = deploy_cases.vqvae_pipeline(self.torch_model, self.config.anomaly)
      elif part == "deploy_favae":
        pipeline = deploy_cases.favae_pipeline(*self.favae()["models"])
      elif part == "deploy_resample":
        r = self.resampling()
        pipeline = deploy_cases.ResamplingPipeline(r["vqvae"], r["prior"], r["config"].anomaly,
                                                   r["variables"]["eta"])
      else:
        pipeline = deploy_cases.igd_pipeline(self.igd()["model"], self.igd()["config"])
      self._deploy[part] = deploy_cases.DeployModels(pipeline, self.part_image_size(part),
                                                     NUM_CHANNELS)
    return self._deploy[part]

  def _deploy_method(self, part: str):
    """(vqjax fp32 method, its config, variables, the variable collections predict takes)."""
    if part == "deploy":
      return self.methods["fp32"], self.config, self.variables, jax_cases.VQVAE_COLLECTIONS
    if part == "deploy_favae":
      f = self.favae()
      return f["methods"]["fp32"], f["config"], f["variables"], jax_cases.FAVAE_COLLECTIONS
    if part == "deploy_resample":
      r = self.resampling()
      return r["method"], r["config"], r["variables"], jax_cases.RESAMPLING_COLLECTIONS
    g = self.igd()
    return g["methods"]["fp32"], g["config"], g["variables"], jax_cases.IGD_COLLECTIONS

  def build_deploy(self, part: str, variant: str, inputs) -> harness.Workload:
    if self.s["device"] != "cpu":
      raise ValueError("the deploy rows are CPU rows: run them with --device cpu")
    d, threads = self.deploy(part), self.s["cpu_threads"]
    threads = threads if isinstance(threads, int) else 0
    names = deploy_cases.map_names(part)
    method, config, variables, keys = self._deploy_method(part)
    if variant == "vqjax_fp32":
      return deploy_cases.jit_workload(method, variables, inputs, self.jax_device, names, keys)
    if variant == "vqjax_exported":
      return deploy_cases.exported_workload(method, config.method, variables, d.image_size,
                                            NUM_CHANNELS, inputs, d.folder)
    if variant.startswith("torch_"):
      return deploy_cases.torch_workload(variant.split("_", 1)[1], d.pipeline, inputs,
                                         self.s["compile_mode"])
    onnx_path = d.onnx_path()
    self.s[f"{part}_onnx"] = d.onnx_info  # exported once per run: recorded with the settings
    if variant == "onnxruntime_fp32":
      return deploy_cases.onnxruntime_workload(onnx_path, inputs, threads, names, d.pipeline)
    hint = {"openvino_fp32": "f32", "openvino_default": None}[variant]
    return deploy_cases.openvino_workload(onnx_path, inputs, threads, hint, names, d.pipeline)

  def part_image_size(self, part: str) -> int:
    if part in ("favae", "deploy_favae"):
      return self.favae()["image_size"]
    if part == "deploy_resample":
      return self.resampling()["image_size"]
    return (self.igd()["image_size"] if part in ("igd", "igd_train", "deploy_igd")
            else self.image_size)

  def build(self, part: str, variant: str, precision: str, inputs) -> harness.Workload:
    framework, kind = variant.split("_", 1)
    if part in DEPLOY_PARTS:
      return self.build_deploy(part, variant, inputs)
    if part == "favae":
      f = self.favae()
      if framework == "vqjax":
        return jax_cases.inference(f["methods"][precision], f["variables"], inputs,
                                   self.jax_device, jax_cases.FAVAE_COLLECTIONS)
      return torch_cases.favae_inference(kind, f["models"], inputs, self.torch_device,
                                         compile_mode=self.s["compile_mode"])
    if part == "igd":
      g = self.igd()
      if framework == "vqjax":
        return jax_cases.inference(g["methods"][precision], g["variables"], inputs,
                                   self.jax_device, jax_cases.IGD_COLLECTIONS)
      return torch_cases.igd_inference(kind, g["model"], g["config"], inputs, self.torch_device,
                                       compile_mode=self.s["compile_mode"])
    if part == "igd_train":  # vqjax only (VARIANTS)
      g = self.igd()
      return jax_cases.igd_train(g["methods"][precision], g["config"], g["variables"], inputs,
                                 self.jax_device)
    if framework == "vqjax":
      method = self.methods[precision]
      if part == "inference":
        return jax_cases.inference(method, self.variables, inputs, self.jax_device)
      if part == "train":
        return jax_cases.train(method, self.config, self.variables, inputs, self.jax_device)
      return jax_cases.ssim(self.config.anomaly, inputs, self.jax_device)
    if part == "inference":
      return torch_cases.inference(kind, self.torch_model, self.config.anomaly, inputs,
                                   self.torch_device, compile_mode=self.s["compile_mode"])
    if part == "train":
      return torch_cases.train(kind, self.torch_model, self.config, inputs, self.torch_device)
    return torch_cases.ssim(jax_cases.ssim_kwargs(self.config.anomaly), inputs, self.torch_device)

  def skip_reason(self, variant: str) -> str | None:
    if "compile" not in variant:
      return None
    if not self.s["torch_compile"]:
      return "--no-torch-compile"
    if self.compile_seconds >= self.s["compile_budget_s"]:
      return (f"torch.compile budget spent ({self.compile_seconds:.0f} s of "
              f"--compile-budget-s {self.s['compile_budget_s']:.0f})")
    return None

  def run_one(self, part: str, batch: int, spec: tuple, inputs, agree: bool) -> dict:
    """One configuration -> its result record (status ok / skipped / error)."""
    variant, label, precision = spec
    record = dict(part=part, variant=variant, label=label, precision=precision, batch=batch,
                  framework=variant.split("_", 1)[0])
    reason = self.skip_reason(variant)
    if reason is not None:
      return dict(record, status="skipped", reason=reason)
    try:
      workload = self.build(part, variant, precision, inputs)
      try:
        m = harness.measure(workload, warmup=self.s["warmup"], repeats=self.s["repeats"])
      finally:
        workload.close()
      first = m.pop("first_output")
      if agree:
        record["agreement"] = self.agreement(part, variant, comparable(part, variant, first))
      del first
    except Exception as exc:  # recorded; the other configurations still run
      self._free()
      return dict(record, status="error", reason=harness.error_text(exc))
    if "compile" in variant:
      self.compile_seconds += m["first_call_s"]
      m["compile_s"] = max(m["first_call_s"] - m["median_s"], 0.0)
      m["compile_note"] = "estimated: first call - steady-state median"
    elif variant.startswith("vqjax"):
      m["compile_note"] = "jit(...).lower(...).compile(), timed alone inside the first call"
    self._free()
    return dict(record, status="ok", images_per_s=batch / m["median_s"], **m)

  def _free(self):
    gc.collect()
    if self.torch_device.type == "cuda":
      torch.cuda.empty_cache()

  def agreement(self, part: str, variant: str, values) -> dict:
    """Difference from vqjax fp32 on the same first input batch (which runs first)."""
    if variant == "vqjax_fp32":
      self.reference[part] = values
    ref = self.reference.get(part)
    if ref is None:
      return {}
    if part in TRAIN_PARTS:
      return {"loss": values, "loss_diff": abs(values - ref)}
    if part in ("ssim", "igd"):  # IGD's maps are in [0, 1]
      return {"max_abs_diff": float(np.max(np.abs(values - ref)))}
    if part == "favae":  # sums of hundreds of channel log-densities: relative to the largest
      return {"max_rel_diff": float(np.max(np.abs(values - ref)) / (np.max(np.abs(ref)) or 1.0))}
    if part in DEPLOY_PARTS:
      return deploy_cases.agreement(values, ref, part)
    # SSIM+AM scales with squared latent distances: relative to its largest value.
    scale = float(np.max(np.abs(ref["ssim_am"]))) or 1.0
    return {"max_abs_diff_ssim": float(np.max(np.abs(values["ssim"] - ref["ssim"]))),
            "max_rel_diff_ssim_am": float(np.max(np.abs(values["ssim_am"] - ref["ssim_am"])))
                                    / scale}

  def run(self, log, on_result=lambda results: None) -> list[dict]:
    """Every configuration in order; on_result(results so far) after each one."""
    results = []
    for part in self.s["parts"]:
      batches = self.s["train_batches"] if part in TRAIN_PARTS else self.s["batches"]
      for batch in batches:
        inputs = host_batches(part, batch, self.part_image_size(part), self.s["seed"])
        for spec in VARIANTS[part]:
          # Outputs are compared at the smallest batch only (transfers cost time).
          r = self.run_one(part, batch, spec, inputs, agree=batch == min(batches))
          log(progress_line(r))
          results.append(r)
          on_result(results)
    return results


def progress_line(r: dict) -> str:
  head = f"[{r['part']} b={r['batch']}] {r['label']}: "
  if r["status"] != "ok":
    return head + f"{r['status']}: {r['reason']}"
  return head + (f"{r['images_per_s']:.4g} img/s (median {r['median_s'] * 1e3:.3g} ms, "
                 f"first call {r['first_call_s']:.2f} s)")


def main(args: argparse.Namespace, argv: list[str], runtime: dict) -> dict:
  device = choose_device(args.device)
  settings = resolve_settings(args, device, runtime)
  # Explicit float32 precision on both sides (see torch_cases.set_precision).
  jax.config.update("jax_default_matmul_precision", JAX_PRECISION[settings["fp32_precision"]])
  torch_device = torch_cases.select_device(device)
  torch_cases.set_precision(torch_device, settings["fp32_precision"])
  if isinstance(settings["cpu_threads"], int):
    torch.set_num_threads(settings["cpu_threads"])
  # CPU buffers of a donated train state are not always reusable; harmless here.
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
  warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # = --no-compile-caches
  log = lambda line: print(line, file=sys.stderr, flush=True)
  bench = Bench(settings)
  m = bench.config.model
  settings["model"] = (f"configs/mvtec_vq.py:{settings['config_preset']} — channels {m.channels}, "
                       f"{m.num_downsamplings} downsamplings, {m.num_residual_layers} residual "
                       f"layers, M={m.num_codes}, D={m.embedding_dim}")
  settings["image_size"] = bench.image_size
  if {"favae", "deploy_favae"} & set(settings["parts"]):
    f = bench.favae()["config"]
    settings["favae_model"] = (f"configs/mvtec_favae.py:{settings['config_preset']} — width "
                               f"{f.model.width}, latent {f.model.latent_dim}, VGG16 (7, 14, 21), "
                               f"images {f.data.image_size}x{f.data.image_size}x3")
  if {"igd", "igd_train", "deploy_igd"} & set(settings["parts"]):
    g = bench.igd()["config"]
    settings["igd_model"] = (
        f"configs/mvtec_igd.py:{settings['config_preset']} — global widths "
        f"{list(g.model.global_encoder_widths)} / {list(g.model.global_decoder_widths)}, "
        + (f"local widths {list(g.model.local_encoder_widths)} / "
           f"{list(g.model.local_decoder_widths)} on {g.model.local_size} px patches every "
           f"{g.model.local_stride} px, " if g.model.local else "no local model, ")
        + f"d_z {g.model.latent_dim}, images {g.data.image_size}x{g.data.image_size}x3")
  if "deploy_resample" in settings["parts"]:
    r = bench.resampling()
    c = r["config"]
    settings["resample_model"] = (
        f"configs/mvtec_vq_resample.py:{settings['config_preset']} — VQ-VAE channels "
        f"{c.model.channels}, M={c.model.num_codes}; PixelSNAIL channels {c.prior.channels}, "
        f"{c.prior.num_blocks} blocks, {c.prior.num_heads} heads; images {c.data.image_size}x"
        f"{c.data.image_size}x3; random weights, eta {float(r['variables']['eta']):.3g} (the "
        "10% quantile of the present codes' probabilities: see jax_cases.resampling_variables)")
  log(f"benchmarks: preset {settings['preset']} on {device} ({bench.jax_device.device_kind}); "
      f"{settings['model']}")
  env = environment.collect(argv, bench.jax_device, torch_device, {
      "torch_precision": torch_cases.precision_settings(), **torch_cases.cuda_info()})
  tag = "cpu" if device == "cpu" else environment.device_slug(bench.jax_device.device_kind)
  args.out_dir.mkdir(parents=True, exist_ok=True)
  stem = args.out_dir / f"{settings['preset']}_{tag}"
  json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
  total = sum(len(VARIANTS[part])
              * len(settings["train_batches" if part in TRAIN_PARTS else "batches"])
              for part in settings["parts"])

  def save(results: list[dict]) -> dict:
    # Rewritten after every configuration (atomically): a run cut short keeps what it measured,
    # marked incomplete.
    report.add_ratios(results)
    data = {"schema": 1, "environment": env, "settings": settings, "results": results,
            "complete": len(results) == total}
    write_json(json_path, data)
    write_text(md_path, report.render(data))
    return data

  data = save(bench.run(log, on_result=save))
  log(f"wrote {json_path} and {md_path}")
  print(report.render(data), flush=True)
  return data
