"""The throughput harness (benchmarks/): end to end on the smoke preset, its timing rules,
and the PyTorch training step's loss and gradients against vqjax's.

The end-to-end run of the VQ-VAE parts (FAVAE's, IGD's and IGD's training step: the slow
test) skips torch.compile with --no-torch-compile (its CPU compile alone takes
~30 s per batch size); the results must then say 'skipped'.
"""
import json

import jax
import numpy as np
import pytest
import torch

from benchmarks import jax_cases, torch_cases
from benchmarks.configurations import VARIANTS
from benchmarks.harness import MemoryProbe, Workload, measure
from benchmarks.torch_reference.convert import flatten_variables, parameter_mapping
from benchmarks.torch_reference.train import make_train_step, vqvae_ssim_loss
from configs import mvtec_vq
from tests.bench_helpers import run_smoke_benchmark

BATCHES = {"inference": [1, 2], "ssim": [1, 2], "train": [2], "favae": [1, 2], "igd": [1, 2],
           "igd_train": [2], "deploy": [1, 2]}
# The default smoke run covers the harness on the VQ-VAE parts; FAVAE's and IGD's parts (their
# torch twins' parity is tested in test_torch_parity) and igd_train (two ~1 min compiles of
# IGD's training step on a CPU) run in the slow test below, to keep the suite's time.
SMOKE_PARTS = ("inference", "train", "ssim")
SLOW_PARTS = ("favae", "igd", "igd_train")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """(JSON results, Markdown file text, stdout) of one smoke-preset run on the CPU."""
  return run_smoke_benchmark(tmp_path_factory.mktemp("bench"), SMOKE_PARTS)


def test_every_configuration_is_reported(smoke_run):
  data, _, _ = smoke_run
  got = {(r["part"], r["variant"], r["batch"]) for r in data["results"]}
  want = {(part, v[0], b) for part, specs in VARIANTS.items() if part in SMOKE_PARTS
          for v in specs for b in BATCHES[part]}
  assert got == want
  for r in data["results"]:
    if r["variant"] == "torch_compile_bf16_cl":
      assert r["status"] == "skipped" and "--no-torch-compile" in r["reason"]
    else:
      assert r["status"] == "ok", r
      assert r["images_per_s"] > 0 and r["median_s"] > 0
      assert len(r["times_s"]) == 2 and r["warmup"] == 1


def test_compile_time_is_separate_from_steady_state(smoke_run):
  data, _, _ = smoke_run
  for r in data["results"]:
    if r["status"] != "ok":
      continue
    assert r["first_call_s"] > 0 and "compile_s" in r
    if r["framework"] == "vqjax":
      # The AOT compile is inside the first call, and none of it in the timed calls.
      assert 0 < r["compile_s"] <= r["first_call_s"]
      assert r["median_s"] < r["compile_s"]
    else:
      assert r["compile_s"] is None  # eager: nothing to compile


def test_environment_and_cpu_labels(smoke_run):
  data, markdown, _ = smoke_run
  env = data["environment"]
  for key in ("date_utc", "command", "versions", "jax_default_matmul_precision",
              "torch_precision", "jax_device"):
    assert env[key], key
  assert "--preset smoke" in env["command"]
  assert {"jax", "jaxlib", "flax", "torch"} <= set(env["versions"])
  assert env["torch_precision"]["cuda.matmul.allow_tf32"] is False
  assert "CPU figures" in markdown
  assert all(r["peak_bytes"] is None for r in data["results"] if r["status"] == "ok")


def test_agreement_with_vqjax_fp32(smoke_run):
  data, _, _ = smoke_run
  rows = {(r["part"], r["variant"]): r for r in data["results"] if r["batch"] == 1 or r["part"] == "train"}
  # Same weights, same inputs: the fp32 reference matches; bf16 is close.
  assert rows[("inference", "torch_eager_fp32")]["agreement"]["max_abs_diff_ssim"] < 1e-4
  assert rows[("inference", "torch_eager_bf16_cl")]["agreement"]["max_abs_diff_ssim"] < 0.05
  assert rows[("ssim", "torch_eager_fp32")]["agreement"]["max_abs_diff"] < 1e-5
  assert rows[("train", "torch_eager_fp32")]["agreement"]["loss_diff"] < 1e-4


@pytest.mark.slow  # FAVAE's and IGD's nets, two ~1 min compiles of IGD's training step
def test_favae_igd_and_igd_train_parts(tmp_path):
  """FAVAE and IGD inference against their torch twins; IGD's training step: JAX only, so no
  torch ratios, and the report says so."""
  data, markdown, _ = run_smoke_benchmark(tmp_path, SLOW_PARTS)
  got = {(r["part"], r["variant"], r["batch"]) for r in data["results"]}
  assert got == {(part, v[0], b) for part in SLOW_PARTS for v in VARIANTS[part]
                 for b in BATCHES[part]}
  rows = {(r["part"], r["variant"]): r for r in data["results"] if r["batch"] == 1}
  # FAVAE maps (~1e3, sums of channel log-densities): the torch twin within 1e-5 of their scale.
  assert rows[("favae", "torch_eager_fp32")]["agreement"]["max_rel_diff"] < 1e-5
  assert rows[("favae", "vqjax_bf16")]["agreement"]["max_rel_diff"] < 0.1
  # IGD maps (in [0, 1]; measured 5e-7 fp32, 0.015 bf16).
  assert rows[("igd", "torch_eager_fp32")]["agreement"]["max_abs_diff"] < 1e-4
  assert rows[("igd", "vqjax_bf16")]["agreement"]["max_abs_diff"] < 0.1
  igd_train = [r for r in data["results"] if r["part"] == "igd_train"]
  assert {r["variant"] for r in igd_train} == {"vqjax_fp32", "vqjax_bf16"}
  for r in igd_train:
    assert r["images_per_s"] > 0 and np.isfinite(r["agreement"]["loss"])
    assert set(r["ratios"].values()) == {None}
  assert "FAVAE inference" in markdown and "IGD inference" in markdown
  assert "IGD training step" in markdown
  assert "no PyTorch twin of the training step: absolute figures only" in markdown
  igd_train_lines = [line for line in markdown.splitlines()
                     if line.startswith("| vqjax IGD jit train step")]
  assert len(igd_train_lines) == 2 and all(line.endswith("| n/a |") for line in igd_train_lines)


def test_deploy_rows_agree_and_compare_with_the_best_other_row(tmp_path):
  """CPU deployment rows on uint8 images: the exported artifact, the torch reference, its
  ONNX export under ONNX Runtime (and OpenVINO when the deploy-bench extra is installed)
  give the maps of vqjax's jit within float32 rounding; vqjax rows carry the ratio to the
  fastest other row."""
  import importlib.util
  data, markdown, _ = run_smoke_benchmark(tmp_path, ("deploy",))
  rows = {(r["variant"], r["batch"]): r for r in data["results"]}
  assert set(rows) == {(v[0], b) for v in VARIANTS["deploy"] for b in (1, 2)}
  assert rows[("torch_compile_fp32", 1)]["status"] == "skipped"  # --no-torch-compile
  must_run = ["vqjax_fp32", "vqjax_exported", "torch_eager_fp32", "onnxruntime_fp32"]
  has_openvino = importlib.util.find_spec("openvino") is not None
  openvino = ["openvino_fp32", "openvino_default"]
  for variant in must_run + (openvino if has_openvino else []):
    for batch in (1, 2):
      assert rows[(variant, batch)]["status"] == "ok", rows[(variant, batch)].get("reason")
    agreement = rows[(variant, 1)]["agreement"]
    # Same weights, same uint8 images: float32 rounding only (measured <= 1e-5).
    assert agreement["max_abs_diff_ssim"] < 1e-4 and agreement["max_rel_diff_ssim_am"] < 1e-4
  if not has_openvino:  # the rows say what to install instead of failing the run
    for variant in openvino:
      assert 'pip install -e ".[deploy-bench]"' in rows[(variant, 1)]["reason"]
  assert rows[("onnxruntime_fp32", 1)]["intra_op_num_threads"] == 1  # --cpu-threads default
  assert data["settings"]["deploy_onnx"]["onnx_bytes"] > 0
  for batch in (1, 2):
    ratio = rows[("vqjax_fp32", batch)]["ratios"]
    others = [r for (v, b), r in rows.items() if b == batch and r["status"] == "ok"
              and not v.startswith("vqjax")]
    best = max(others, key=lambda r: r["images_per_s"])
    assert ratio["best_other"] == best["variant"]
    assert ratio["vs_best_other"] == pytest.approx(
        rows[("vqjax_fp32", batch)]["images_per_s"] / best["images_per_s"])
  assert "## CPU deployment" in markdown and "× best other row" in markdown


@pytest.mark.slow  # ONNX exports of both references; the deploy machinery stays tested
def test_favae_and_igd_deploy_rows_agree_with_vqjax_jit(tmp_path):
  """FAVAE's and IGD's deployment rows (their torch references exported to ONNX: FAVAE's
  Gaussian log-densities, IGD's patches and MS-SSIM) give vqjax jit's maps within float32
  rounding, each part under its own heading."""
  import importlib.util
  data, markdown, _ = run_smoke_benchmark(tmp_path, ("deploy_favae", "deploy_igd"))
  rows = {(r["part"], r["variant"], r["batch"]): r for r in data["results"]}
  has_openvino = importlib.util.find_spec("openvino") is not None
  checks = {"deploy_favae": "max_rel_diff_favae", "deploy_igd": "max_abs_diff_igd"}
  for part, key in checks.items():
    variants = ["vqjax_exported", "torch_eager_fp32", "onnxruntime_fp32"] + (
        ["openvino_fp32"] if has_openvino else [])
    for variant in variants:
      row = rows[(part, variant, 1)]
      assert row["status"] == "ok", row.get("reason")
      assert row["agreement"][key] < 1e-4  # measured <= 1.3e-6
    assert data["settings"][f"{part}_onnx"]["onnx_bytes"] > 0
    assert rows[(part, "vqjax_fp32", 2)]["ratios"]["best_other"] is not None
  assert "FAVAE's merged map" in markdown and "IGD's Eq. 12 map" in markdown
  assert "max rel. \\|Δ FAVAE map\\| vs vqjax jit" in markdown


def test_markdown_tables_and_printed_last(smoke_run):
  data, markdown, stdout = smoke_run
  for heading in ("Batch-1 latency", "Training step", "SSIM map alone", "Inference"):
    assert heading in markdown
  for part, specs in VARIANTS.items():
    if part not in SMOKE_PARTS:
      continue
    for _, label, _ in specs:
      assert label in markdown
  assert "skipped: --no-torch-compile" in markdown
  assert "first call s" in markdown and "compile s" in markdown
  assert "× torch.compile bf16" in markdown and "× torch eager bf16 AMP" in markdown
  # The printed report ends with the inference table.
  last = [line for line in stdout.strip().splitlines() if line.strip()][-1]
  assert last.startswith("| torch.compile bf16 AMP + channels_last | 2 | skipped")
  assert stdout.strip() == markdown.strip()


# --- timing rules -----------------------------------------------------------------------


def test_measure_times_first_call_apart_and_rotates_inputs():
  clock, calls = [0.0], []

  def run(i):
    calls.append(i)
    clock[0] += 10.0 if len(calls) == 1 else 1.0 + 0.1 * (i % 2)
    return i

  def compile_now():
    clock[0] += 4.0
    return 4.0

  workload = Workload(run=run, sync=lambda _: None, memory=MemoryProbe(), compile=compile_now)
  m = measure(workload, warmup=2, repeats=5, timer=lambda: clock[0])
  assert calls == list(range(8))  # first, 2 warm-up, 5 timed: input i % 4 in turn
  assert m["compile_s"] == 4.0 and m["first_call_s"] == 14.0
  assert m["times_s"] == pytest.approx([1.1, 1.0, 1.1, 1.0, 1.1])
  assert m["median_s"] == pytest.approx(1.1) and m["min_s"] == pytest.approx(1.0)
  assert m["peak_bytes"] is None and m["peak_note"] == "n/a (CPU)"


# --- the PyTorch training step is vqjax's -----------------------------------------------


def test_torch_loss_and_gradients_match_vqjax():
  config = mvtec_vq.get_config("smoke")
  method = jax_cases.method_for(config, "float32", 3)
  variables = jax_cases.random_variables(method, (32, 32, 3), seed=3)
  images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
  model_state = {k: v for k, v in variables.items() if k != "params"}
  with jax.default_matmul_precision("highest"):
    (loss, (_, metrics)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
        variables["params"], model_state, images, jax.random.key(0))
  model = torch_cases.base_model(config, variables, torch.device("cpu")).train()
  t_loss, aux = vqvae_ssim_loss(model, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                config.loss.beta)
  t_loss.backward()
  assert len(np.unique(aux["indices"].numpy())) > 1
  np.testing.assert_allclose(t_loss.item(), float(loss), rtol=1e-5)
  flat = flatten_variables({"params": grads})
  params = dict(model.named_parameters())
  checked = 0
  for flax_path, torch_name, transform in parameter_mapping(model):
    if flax_path.startswith("params/"):
      ours = transform(flat[flax_path])
      scale = float(np.max(np.abs(ours))) or 1.0
      np.testing.assert_allclose(params[torch_name].grad.numpy(), ours, atol=1e-4 * scale,
                                 rtol=0, err_msg=torch_name)
      checked += 1
  assert checked == len(params)


def test_torch_train_step_runs_and_learns():
  config = mvtec_vq.get_config("smoke")
  method = jax_cases.method_for(config, "float32", 3)
  variables = jax_cases.random_variables(method, (32, 32, 3), seed=4)
  model = torch_cases.base_model(config, variables, torch.device("cpu"))
  step = make_train_step(model, beta=config.loss.beta, learning_rate=1e-3,
                         dead_code_threshold=config.loss.dead_code_threshold)
  images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), np.uint8))
  losses = [float(step(images)) for _ in range(8)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert step.stats.usage.sum().item() == pytest.approx(1.0, abs=1e-4)


def _resampling_row(images, batch, refilled_per_s, exact=True):
  mode = {"images_per_s": refilled_per_s, "median_s": 1.0, "first_call_s": 1.0,
          "prior_tables_per_image": 3.0}
  return {"images": images, "num_images": batch, "batch": batch, "table": [32, 32],
          "exact": exact, "mean_passes": 2.0, "max_passes": 5,
          "changed_codes_per_image": 1.0, "naive": dict(mode, images_per_s=1.0),
          "batched": dict(mode, images_per_s=refilled_per_s / 2), "refilled": mode}


def test_results_md_checks_the_targets_against_the_json(smoke_run, tmp_path):
  from benchmarks import results_md
  data, _, _ = smoke_run
  data = json.loads(json.dumps(data))
  # Check at batch 2 (the smoke run's); set vqjax bf16 to 2.5x the torch.compile row.
  compile_row = next(r for r in data["results"] if (r["part"], r["variant"], r["batch"]) ==
                     ("inference", "torch_compile_bf16_cl", 2))
  compile_row.update(status="ok", images_per_s=100.0, median_s=0.02)
  for r in data["results"]:
    if (r["part"], r["batch"]) == ("inference", 2) and r["variant"].startswith("vqjax"):
      r["images_per_s"] = 250.0 if r["variant"] == "vqjax_bf16" else 150.0
  resampling = {"device": "1 x cpu", "config": "configs/mvtec_vq_resample.py", "eta": 5e-4,
                "local_constraint": True, "rows": [_resampling_row("mix", 2, 299.0)]}
  rows = results_md.target_rows(data, resampling, batch=2)
  assert rows[0][0].startswith("SSIM+AM inference, batch 2")
  assert rows[0][1].startswith("2.50× (vqjax jit bf16") and rows[0][2] == "**met**"
  assert rows[-1][2] == "**not met**" and rows[-1][1].startswith("299 img/s (2 tables)")
  resampling["rows"] = [_resampling_row("mix", 2, 301.0, exact=False)]
  assert results_md.target_rows(data, resampling, batch=2)[-1][2] == "**not met** (codes differ)"
  resampling["rows"] = [_resampling_row("mix", 2, 301.0)]
  assert results_md.target_rows(data, resampling, batch=2)[-1][2] == "**met**"

  # The command line: written atomically, CPU-labelled, every section present.
  (tmp_path / "t.json").write_text(json.dumps(data))
  (tmp_path / "r.json").write_text(json.dumps(resampling))
  results_md.main(["--throughput", str(tmp_path / "t.json"), "--resampling",
                   str(tmp_path / "r.json"), "--out", str(tmp_path / "RESULTS.md")])
  text = (tmp_path / "RESULTS.md").read_text()
  assert text.startswith("# Benchmark results — CPU figures, not the H100 result")
  assert "batch 64: ≥ 2× torch.compile bf16 | n/a" in text  # not measured at 64 in smoke
  for heading in ("## Targets", "### Inference:", "## Resampling stage"):
    assert heading in text
  assert not list(tmp_path.glob("*.tmp"))
  # A CPU resampling run beside a GPU throughput run is labelled too.
  gpu = json.loads(json.dumps(data))
  gpu["settings"]["device"] = "gpu"
  assert "(**CPU figures**)" in results_md.render(gpu, resampling)
  assert results_md.render(gpu, resampling).startswith("# Benchmark results — CPU figures")
  with pytest.raises(SystemExit, match="missing.json"):
    results_md.main(["--throughput", str(tmp_path / "missing.json")])


def test_profile_predict_writes_hlo_census_and_trace(tmp_path):
  from benchmarks import profile_predict
  summary = profile_predict.main(["--config", "configs/mvtec_vq.py:smoke", "--batch", "2",
                                  "--dtypes", "float32", "--calls", "2", "--peak-tflops", "1",
                                  "--peak-gbps", "10", "--out-dir", str(tmp_path)])
  run = summary["runs"][0]
  hlo = (tmp_path / "predict_float32.hlo.txt").read_text()
  assert "ENTRY" in hlo
  census = run["census"]
  # Smoke model: 2 strided encoder convs, 2 transposed decoder convs, 3x3 and 1x1 convs; on
  # the CPU the transposed ones are convolutions with lhs dilation (no cuDNN).
  assert census["xla_convolutions"] >= 4 and census["xla_convolutions_with_lhs_dilation"] == 2
  assert sum(census["fusions"].values()) > 0
  assert run["cost_analysis"]["flops"] > 0 and run["images_per_s"] > 0
  assert run["floors"]["compute_floor_s"] == pytest.approx(run["cost_analysis"]["flops"] / 1e12)
  assert run["top_ops"] and all(op["total_us"] > 0 for op in run["top_ops"])
  assert not any(op["op"].startswith("$") for op in run["top_ops"])  # no Python frames
  assert json.loads((tmp_path / "summary.json").read_text())["runs"][0]["dtype"] == "float32"


def test_results_are_saved_complete_and_a_cut_run_is_marked(smoke_run):
  from benchmarks import report
  data, markdown, _ = smoke_run
  assert data["complete"] is True and "Incomplete run" not in markdown
  cut = dict(data, results=data["results"][:3], complete=False)
  assert "**Incomplete run**: 3 configurations measured" in report.render(cut)


def test_conv_profile_times_every_convolution_of_the_network_in_xla_and_onnx_runtime():
  """benchmarks.conv_profile: one row per conv of the VQ-VAE (read from its jaxpr: the smoke
  model has 2 strided + 1 3x3 + 2 per residual layer + 2 projections + 2 transposed), each
  run in both frameworks with matching output shapes (checked inside), flops counted on the
  useful work."""
  from benchmarks import conv_profile
  from configs import mvtec_vq
  config = mvtec_vq.get_config("smoke")
  method, variables, _ = conv_profile.method_and_variables("vqvae_ssim", "smoke")
  rows = conv_profile.profile(method, variables, config.data.image_size, batch=2, repeats=1)
  kinds = [r["kind"] for r in rows]
  assert len(rows) == 4 + 4 * config.model.num_residual_layers + 2
  assert kinds[:2] == ["stride 2", "stride 2"] and kinds[-2:] == ["transposed", "transposed"]
  first, last = rows[0], rows[-1]
  size, c = config.data.image_size, config.model.channels
  assert first["mflop"] == pytest.approx(2 * 2 * (size // 2) ** 2 * 16 * 3 * c / 1e6)
  assert last["channels"] == f"{c}->3" and last["input_hw"] == [size // 2, size // 2]
  assert all(r["xla_ms"] > 0 and r["ort_ms"] > 0 for r in rows)
  table = conv_profile.markdown(rows, 2)
  assert table.count("\n| ") == len(rows) + 2 and "| all |" in table  # header, rows, all
