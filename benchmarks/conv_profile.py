"""Per-convolution CPU profile: XLA's convolutions against ONNX Runtime's on the same shapes.

Each convolution of the VQ-VAE's inference program (read from its jaxpr, so the list follows
the model) is timed alone: as `lax.conv_general_dilated` with the jaxpr's own parameters under
jax.jit, and as a one-node ONNX model (Conv, or ConvTranspose for the decoder's lhs-dilated
convolutions) under ONNX Runtime's CPU provider with all graph optimisations. One thread each
(set XLA_FLAGS before JAX starts: this module does it when run as a script). Answers where the
deployment table's network gap comes from (benchmarks/NOTES.md, issue 15):

  python -m benchmarks.conv_profile --preset default --batch-sizes 1,32

Needs onnx and onnxruntime (`pip install -e ".[deploy-bench]"`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def conv_layers(config, batch: int) -> list[dict]:
  """The convolutions of VQVAESSIM.predict's network for `batch` images, in program order:
  dicts of lhs/rhs shapes (NHWC / HWIO) and the conv's window parameters."""
  import jax
  import jax.extend as jax_extend
  from benchmarks import jax_cases
  from vqjax.methods.vqvae_ssim import _eval_vars
  size = config.data.image_size
  method = jax_cases.method_for(config, "float32", 3)
  variables = jax_cases.random_variables(method, (size, size, 3), 0)
  images = jax.ShapeDtypeStruct((batch, size, size, 3), "float32")
  jaxpr = jax.make_jaxpr(lambda v, x: method.model.apply(_eval_vars(v), x, train=False))(
      variables, images)
  layers = []

  def walk(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        p = eqn.params
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        layers.append(dict(lhs=tuple(lhs), rhs=tuple(rhs), strides=tuple(p["window_strides"]),
                           padding=tuple(tuple(x) for x in p["padding"]),
                           lhs_dilation=tuple(p["lhs_dilation"]),
                           out=tuple(eqn.outvars[0].aval.shape),
                           dimension_numbers=p["dimension_numbers"]))
      for sub in jax_extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return layers


def _flops(layer) -> float:
  """Useful multiply-adds x 2 (a transposed conv counted on its input, not the zeros)."""
  kh, kw, cin, cout = layer["rhs"]
  if any(d > 1 for d in layer["lhs_dilation"]):
    b, h, w, _ = layer["lhs"]
    return 2.0 * b * h * w * kh * kw * cin * cout
  b, ho, wo, _ = layer["out"]
  return 2.0 * b * ho * wo * kh * kw * cin * cout


def _median_ms(fn, repeats: int) -> float:
  for _ in range(3):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def _ort_session(layer, threads: int):
  import numpy as np
  import onnxruntime as ort
  from onnx import TensorProto, helper, numpy_helper
  kh, kw, cin, cout = layer["rhs"]
  b, h, w, _ = layer["lhs"]
  transposed = any(d > 1 for d in layer["lhs_dilation"])
  if transposed:  # lax: pad k-1-p on the dilated input == ConvTranspose pads p
    pads = [kh - 1 - layer["padding"][0][0], kw - 1 - layer["padding"][1][0]] * 2
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=list(layer["lhs_dilation"]),
                            pads=pads)
    weight = np.zeros((cin, cout, kh, kw), np.float32)
  else:
    pads = [layer["padding"][0][0], layer["padding"][1][0],
            layer["padding"][0][1], layer["padding"][1][1]]
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(layer["strides"]), pads=pads)
    weight = np.zeros((cout, cin, kh, kw), np.float32)
  weight[:] = np.random.default_rng(0).standard_normal(weight.shape)
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


def profile(config, batch: int, repeats: int, threads: int = 1) -> list[dict]:
  """Times every conv of the network alone in XLA and in ONNX Runtime; one row per conv."""
  import jax
  import numpy as np
  from jax import lax
  rows = []
  rng = np.random.default_rng(0)
  for i, layer in enumerate(conv_layers(config, batch)):
    x = jax.device_put(rng.standard_normal(layer["lhs"], dtype=np.float32))
    k = jax.device_put(rng.standard_normal(layer["rhs"], dtype=np.float32))
    conv = jax.jit(lambda a, b, layer=layer: lax.conv_general_dilated(
        a, b, layer["strides"], layer["padding"], lhs_dilation=layer["lhs_dilation"],
        dimension_numbers=layer["dimension_numbers"]))
    xla_ms = _median_ms(lambda: conv(x, k).block_until_ready(), repeats)
    session = _ort_session(layer, threads)
    x_nchw = np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))
    out = session.run(None, {"x": x_nchw})[0]
    if out.shape != (layer["out"][0], layer["out"][3], *layer["out"][1:3]):
      raise AssertionError(f"conv {i}: ONNX output {out.shape} vs XLA {layer['out']}")
    ort_ms = _median_ms(lambda: session.run(None, {"x": x_nchw}), repeats)
    kh, kw, cin, cout = layer["rhs"]
    kind = "transposed" if any(d > 1 for d in layer["lhs_dilation"]) else (
        f"stride {layer['strides'][0]}" if layer["strides"][0] > 1 else "stride 1")
    rows.append(dict(index=i, kernel=f"{kh}x{kw}", channels=f"{cin}->{cout}", kind=kind,
                     input_hw=list(layer["lhs"][1:3]), mflop=_flops(layer) / 1e6,
                     xla_ms=xla_ms, ort_ms=ort_ms))
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
  parser.add_argument("--preset", default="default", help="configs/mvtec_vq.py preset")
  parser.add_argument("--batch-sizes", default="1,32")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  from configs import mvtec_vq
  config = mvtec_vq.get_config(args.preset)
  out = {}
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    rows = profile(config, batch, args.repeats)
    out[batch] = rows
    print(markdown(rows, batch) + "\n", flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"preset": args.preset, "threads": 1, "rows": out}, f, indent=1)
  return 0


if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
  sys.exit(main())
