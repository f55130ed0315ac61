"""Per-convolution CPU profile: XLA's convolutions against ONNX Runtime's on the same shapes.

Each convolution of a method's inference program (`predict`, read from its jaxpr, so the list
follows the model) is timed alone: as `lax.conv_general_dilated` with the jaxpr's own parameters under
jax.jit, and as a one-node ONNX model (Conv, or ConvTranspose for the decoder's lhs-dilated
convolutions) under ONNX Runtime's CPU provider with all graph optimisations. One thread each
(set XLA_FLAGS before JAX starts: this module does it when run as a script). Answers where the
deployment table's network gap comes from (benchmarks/NOTES.md, issue 15):

  python -m benchmarks.conv_profile --preset default --batch-sizes 1,32
  python -m benchmarks.conv_profile --method favae --batch-sizes 1,8

Needs onnx and onnxruntime (`pip install -e ".[deploy-bench]"`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


METHODS = ("vqvae_ssim", "favae", "igd")


def method_and_variables(name: str, preset: str):
  """(vqjax method, host variables, image size) of configs/mvtec_<name>.py:<preset>, random
  weights as the benchmark suite makes them."""
  import importlib
  from benchmarks import jax_cases
  module = {"vqvae_ssim": "mvtec_vq", "favae": "mvtec_favae", "igd": "mvtec_igd"}[name]
  config = importlib.import_module(f"configs.{module}").get_config(preset)
  methods, variables = jax_cases.method_case(name, config, num_channels=3)
  return methods["float32"], variables, config.data.image_size


def conv_layers(method, variables, image_size: int, batch: int) -> list[dict]:
  """The convolutions of method.predict for `batch` images, in program order: dicts of
  lhs/rhs shapes (as the jaxpr has them) and the conv's window parameters."""
  import jax
  import jax.extend as jax_extend
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), "uint8")
  jaxpr = jax.make_jaxpr(method.predict)(variables, images)
  layers = []

  def walk(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        p = eqn.params
        if p["batch_group_count"] != 1 or any(d != 1 for d in p["rhs_dilation"]):
          raise NotImplementedError(f"conv with {p}: not profiled")
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        layers.append(dict(lhs=tuple(lhs), rhs=tuple(rhs), strides=tuple(p["window_strides"]),
                           padding=tuple(tuple(x) for x in p["padding"]),
                           lhs_dilation=tuple(p["lhs_dilation"]),
                           groups=p["feature_group_count"],
                           out=tuple(eqn.outvars[0].aval.shape),
                           dimension_numbers=p["dimension_numbers"]))
      for sub in jax_extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return layers


def _nhwc(layer):
  """(lhs [B,H,W,C], rhs [kh,kw,in/groups,out]) shapes whatever the conv's dimension numbers."""
  dn = layer["dimension_numbers"]
  lhs = tuple(layer["lhs"][i] for i in (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
  rhs = tuple(layer["rhs"][i] for i in (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
  return lhs, rhs


def _flops(layer) -> float:
  """Useful multiply-adds x 2 (a transposed conv counted on its input, not the zeros)."""
  (b, h, w, _), (kh, kw, cin_per_group, cout) = _nhwc(layer)
  if any(d > 1 for d in layer["lhs_dilation"]):
    return 2.0 * b * h * w * kh * kw * cin_per_group * cout
  out_hw = [layer["out"][i] for i in layer["dimension_numbers"].out_spec[2:]]
  return 2.0 * b * out_hw[0] * out_hw[1] * kh * kw * cin_per_group * cout


def _median_ms(fn, repeats: int) -> float:
  """harness.measure's steady-state median of a bare call (3 warm-up calls), in ms."""
  from benchmarks import harness
  workload = harness.Workload(run=lambda i: fn(), sync=lambda output: None,
                              memory=harness.MemoryProbe())
  return harness.measure(workload, warmup=2, repeats=repeats)["median_s"] * 1e3


def _ort_session(layer, threads: int):
  import numpy as np
  import onnxruntime as ort
  from onnx import TensorProto, helper, numpy_helper
  (b, h, w, cin), (kh, kw, cin_per_group, cout) = _nhwc(layer)
  (lo_h, hi_h), (lo_w, hi_w) = layer["padding"]
  if any(d > 1 for d in layer["lhs_dilation"]):  # lax pads k-1-p around the dilated input
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"],
                            strides=list(layer["lhs_dilation"]),
                            pads=[kh - 1 - lo_h, kw - 1 - lo_w, kh - 1 - hi_h, kw - 1 - hi_w])
    weight_shape = (cin, cout, kh, kw)
  else:
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(layer["strides"]),
                            pads=[lo_h, lo_w, hi_h, hi_w], group=layer["groups"])
    weight_shape = (cout, cin_per_group, kh, kw)
  weight = np.random.default_rng(0).standard_normal(weight_shape).astype(np.float32)
  graph = helper.make_graph(
      [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, cin, h, w])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
      [numpy_helper.from_array(weight, "w")])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  return ort.InferenceSession(model.SerializeToString(), options,
                              providers=["CPUExecutionProvider"])


def profile(method, variables, image_size: int, batch: int, repeats: int,
            threads: int = 1) -> list[dict]:
  """Times every conv of method.predict alone in XLA and in ONNX Runtime; a row per conv."""
  import jax
  import numpy as np
  from jax import lax
  rows = []
  rng = np.random.default_rng(0)
  for i, layer in enumerate(conv_layers(method, variables, image_size, batch)):
    x = jax.device_put(rng.standard_normal(layer["lhs"], dtype=np.float32))
    k = jax.device_put(rng.standard_normal(layer["rhs"], dtype=np.float32))
    conv = jax.jit(lambda a, b, layer=layer: lax.conv_general_dilated(
        a, b, layer["strides"], layer["padding"], lhs_dilation=layer["lhs_dilation"],
        feature_group_count=layer["groups"], dimension_numbers=layer["dimension_numbers"]))
    xla_ms = _median_ms(lambda: conv(x, k).block_until_ready(), repeats)
    session = _ort_session(layer, threads)
    (b, h, w, cin), (kh, kw, cin_per_group, cout) = _nhwc(layer)
    x_nchw = rng.standard_normal((b, cin, h, w)).astype(np.float32)
    out = session.run(None, {"x": x_nchw})[0]
    out_spec = layer["dimension_numbers"].out_spec
    expected = tuple(layer["out"][d] for d in out_spec)  # N, C, H, W
    if out.shape != expected:
      raise AssertionError(f"conv {i}: ONNX output {out.shape} vs XLA {expected} (NCHW)")
    ort_ms = _median_ms(lambda: session.run(None, {"x": x_nchw}), repeats)
    kind = "transposed" if any(d > 1 for d in layer["lhs_dilation"]) else (
        f"stride {layer['strides'][0]}" if layer["strides"][0] > 1 else "stride 1")
    if layer["groups"] > 1:
      kind += f", {layer['groups']} groups"
    rows.append(dict(index=i, kernel=f"{kh}x{kw}", channels=f"{cin}->{cout}", kind=kind,
                     input_hw=[h, w], mflop=_flops(layer) / 1e6, xla_ms=xla_ms, ort_ms=ort_ms))
  return rows


def markdown(rows: list[dict], batch: int) -> str:
  lines = [f"batch {batch}:", "",
           "| # | conv | channels | input | MFLOP | XLA ms | ORT ms | XLA / ORT | XLA GFLOP/s | ORT GFLOP/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['index']} | {r['kernel']} {r['kind']} | {r['channels']} | "
                 f"{r['input_hw'][0]}x{r['input_hw'][1]} | {r['mflop']:.1f} | {r['xla_ms']:.3f} | "
                 f"{r['ort_ms']:.3f} | {r['xla_ms'] / r['ort_ms']:.2f} | "
                 f"{r['mflop'] / r['xla_ms']:.1f} | {r['mflop'] / r['ort_ms']:.1f} |")
  xla, onnx_rt = sum(r["xla_ms"] for r in rows), sum(r["ort_ms"] for r in rows)
  mflop = sum(r["mflop"] for r in rows)
  lines.append(f"| all | | | | {mflop:.1f} | {xla:.3f} | {onnx_rt:.3f} | {xla / onnx_rt:.2f} | "
               f"{mflop / xla:.1f} | {mflop / onnx_rt:.1f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", default="vqvae_ssim", choices=METHODS)
  parser.add_argument("--preset", default="default", help="the method's config preset")
  parser.add_argument("--batch-sizes", default="1,32")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  method, variables, image_size = method_and_variables(args.method, args.preset)
  out = {}
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    rows = profile(method, variables, image_size, batch, args.repeats)
    out[batch] = rows
    print(markdown(rows, batch) + "\n", flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"method": args.method, "preset": args.preset, "threads": 1, "rows": out}, f,
                indent=1)
  return 0


if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
  sys.exit(main())
