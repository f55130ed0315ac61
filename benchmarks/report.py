"""Markdown report of a results dict (as written to the JSON): header, legend, tables.

The full anomaly-map pipeline table comes last, so it is what a terminal shows at the end.
Re-render a saved run (writes the .md beside the JSON and prints it):
  python -m benchmarks.report benchmarks/results/cpu_cpu.json
"""
from __future__ import annotations

import json
import pathlib
import sys

from benchmarks.configurations import DEPLOY_MAPS, DEPLOY_PARTS

# Ratio baselines: (part, variant) of the torch configurations others are compared with.
COMPILE_BF16 = "torch_compile_bf16_cl"
EAGER_AMP = "torch_eager_bf16_cl"
EAGER_FP32 = "torch_eager_fp32"


def find(results: list[dict], part: str, variant: str, batch: int) -> dict | None:
  for r in results:
    if (r["part"], r["variant"], r["batch"]) == (part, variant, batch):
      return r
  return None


def ratio(results: list[dict], row: dict, baseline: str) -> float | None:
  """row images/s / baseline images/s at the same part and batch (None if either is missing)."""
  base = find(results, row["part"], baseline, row["batch"])
  if row["status"] != "ok" or base is None or base["status"] != "ok":
    return None
  return row["images_per_s"] / base["images_per_s"]


def best_other(results: list[dict], row: dict) -> dict | None:
  """The fastest measured row of another framework than vqjax at the row's part and batch."""
  others = [r for r in results if (r["part"], r["batch"]) == (row["part"], row["batch"])
            and r["status"] == "ok" and not r["variant"].startswith("vqjax")]
  return max(others, key=lambda r: r["images_per_s"], default=None)


def add_ratios(results: list[dict]) -> None:
  """Stores the ratios the tables show in each result (so the JSON has them too)."""
  for r in results:
    r["ratios"] = {f"vs_{b}": ratio(results, r, b) for b in (COMPILE_BF16, EAGER_AMP, EAGER_FP32)}
    if r["part"] in DEPLOY_PARTS:
      best = best_other(results, r)
      r["ratios"]["vs_best_other"] = (
          None if best is None or r["status"] != "ok" else r["images_per_s"] / best["images_per_s"])
      r["ratios"]["best_other"] = None if best is None else best["variant"]


def _num(value, fmt: str = "{:.3g}") -> str:
  return "n/a" if value is None else fmt.format(value)


def _ms(seconds) -> str:
  return "n/a" if seconds is None else f"{seconds * 1e3:.3g}"


def _mib(row: dict) -> str:
  if row.get("peak_bytes") is None:
    return "n/a"
  mark = "≤" if row.get("peak_is_upper_bound") else ""
  return f"{mark}{row['peak_bytes'] / 2**20:.0f}"


def _ratio_cell(row: dict, baseline: str) -> str:
  value = row.get("ratios", {}).get(f"vs_{baseline}")
  return "n/a" if value is None else f"{value:.2f}×"


def _status_cell(row: dict) -> str:
  """images/s, or why there is none ('skipped: ...' / 'error: ...')."""
  if row["status"] == "ok":
    return f"{row['images_per_s']:.4g}"
  reason = row.get("reason", "").replace("|", "/")
  return f"{row['status']}: {reason[:160]}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _timing_cells(r: dict) -> list[str]:
  ok = r["status"] == "ok"
  spread = f"{_ms(r.get('p10_s'))}–{_ms(r.get('p90_s'))}" if ok else "n/a"
  return [_status_cell(r), _ms(r.get("median_s")) if ok else "n/a", spread,
          _num(r.get("first_call_s"), "{:.2f}") if ok else "n/a",
          _num(r.get("compile_s"), "{:.2f}") if ok else "n/a", _mib(r) if ok else "n/a"]


TIMING_HEADER = ["images/s", "median ms", "p10–p90 ms", "first call s", "compile s", "peak MiB"]


def _rows(results, part):
  return [r for r in results if r["part"] == part]


def _agreement(r: dict, key: str, fmt: str = "{:.2g}") -> str:
  return _num((r.get("agreement") or {}).get(key), fmt)


def latency_table(results: list[dict]) -> list[str]:
  rows = [r for r in _rows(results, "inference") if r["batch"] == 1]
  return markdown_table(
      ["variant (full pipeline, batch 1)", "latency ms (median)", "p10–p90 ms"],
      [[r["label"], _ms(r["median_s"]) if r["status"] == "ok" else _status_cell(r),
        f"{_ms(r.get('p10_s'))}–{_ms(r.get('p90_s'))}" if r["status"] == "ok" else "n/a"]
       for r in rows])


def train_table(results: list[dict]) -> list[str]:
  return markdown_table(
      ["variant", "batch", *TIMING_HEADER, "loss at step 1", "× torch eager bf16 AMP"],
      [[r["label"], str(r["batch"]), *_timing_cells(r), _agreement(r, "loss", "{:.6g}"),
        _ratio_cell(r, EAGER_AMP)] for r in _rows(results, "train")])


def ssim_table(results: list[dict]) -> list[str]:
  return markdown_table(
      ["variant", "batch", *TIMING_HEADER, "max \\|Δ\\| vs vqjax", "× torch eager fp32"],
      [[r["label"], str(r["batch"]), *_timing_cells(r), _agreement(r, "max_abs_diff"),
        _ratio_cell(r, EAGER_FP32)] for r in _rows(results, "ssim")])


def inference_table(results: list[dict]) -> list[str]:
  return markdown_table(
      ["variant", "batch", *TIMING_HEADER, "max \\|Δ SM\\| vs vqjax fp32",
       "× torch.compile bf16", "× torch eager bf16 AMP"],
      [[r["label"], str(r["batch"]), *_timing_cells(r), _agreement(r, "max_abs_diff_ssim"),
        _ratio_cell(r, COMPILE_BF16), _ratio_cell(r, EAGER_AMP)]
       for r in _rows(results, "inference")])


def favae_table(results: list[dict]) -> list[str]:
  return markdown_table(
      ["variant", "batch", *TIMING_HEADER, "max rel. \\|Δ map\\| vs vqjax fp32",
       "× torch.compile bf16", "× torch eager bf16 AMP"],
      [[r["label"], str(r["batch"]), *_timing_cells(r), _agreement(r, "max_rel_diff"),
        _ratio_cell(r, COMPILE_BF16), _ratio_cell(r, EAGER_AMP)]
       for r in _rows(results, "favae")])


def igd_table(results: list[dict]) -> list[str]:
  return markdown_table(
      ["variant", "batch", *TIMING_HEADER, "max \\|Δ map\\| vs vqjax fp32",
       "× torch.compile bf16", "× torch eager bf16 AMP"],
      [[r["label"], str(r["batch"]), *_timing_cells(r), _agreement(r, "max_abs_diff"),
        _ratio_cell(r, COMPILE_BF16), _ratio_cell(r, EAGER_AMP)]
       for r in _rows(results, "igd")])


def igd_train_table(results: list[dict]) -> list[str]:
  """No torch rows to compare with: the ratio column says n/a."""
  return markdown_table(
      ["variant", "batch", *TIMING_HEADER, "loss at step 1", "× torch eager bf16 AMP"],
      [[r["label"], str(r["batch"]), *_timing_cells(r), _agreement(r, "loss", "{:.6g}"),
        _ratio_cell(r, EAGER_AMP)] for r in _rows(results, "igd_train")])


def _deploy_facts(r: dict) -> str:
  """Threads and precision as each framework reports them."""
  keys = ("intra_op_num_threads", "inference_num_threads", "torch_num_threads",
          "inference_precision")
  return ", ".join(f"{k}={r[k]}" for k in keys if r.get(k) is not None) or "n/a"


_MAP_LABELS = {"ssim": "SM", "ssim_am": "SSIM+AM", "favae": "FAVAE map", "igd": "IGD map",
               "resample": "resampling map (0..255)"}


def deploy_table(results: list[dict], part: str = "deploy") -> list[str]:
  rows = _rows(results, part)
  maps = DEPLOY_MAPS[part]
  cells = []
  for r in rows:
    ok = r["status"] == "ok"
    best = r.get("ratios", {}).get("vs_best_other")
    vs_best = ("n/a" if best is None or not r["variant"].startswith("vqjax")
               else f"{best:.2f}× ({r['ratios']['best_other']})")
    cells.append([r["label"], str(r["batch"]), _status_cell(r),
                  _ms(r.get("median_s")) if ok else "n/a", _ms(r.get("p90_s")) if ok else "n/a",
                  _num(r.get("first_call_s"), "{:.2f}") if ok else "n/a",
                  *(_agreement(r, f"max_{kind}_diff_{name}") for name, kind in maps),
                  _deploy_facts(r), vs_best])
  agreement_headers = [("max \\|Δ {}\\|" if kind == "abs" else "max rel. \\|Δ {}\\|").format(
      _MAP_LABELS[name]) + (" vs vqjax jit" if i == 0 else "") for i, (name, kind) in enumerate(maps)]
  return markdown_table(
      ["variant", "batch", "images/s", "p50 ms", "p90 ms", "first call s", *agreement_headers,
       "threads / precision", "× best other row"], cells)


def resampling_table(rows: list[dict]) -> list[str]:
  """Table of benchmarks.bench_resampling rows."""
  def speedup(r, other):
    return f"{r['refilled']['images_per_s'] / r[other]['images_per_s']:.1f}x"

  header = ["images", "batch", "exact", "passes mean / max", "changed codes/img",
            "prior tables/img naive / batched / refilled", "img/s naive", "img/s batched",
            "img/s refilled", "refilled vs naive", "refilled vs batched"]
  return markdown_table(header, [
      [r["images"], str(r["batch"]), str(r["exact"]),
       f"{r['mean_passes']:.1f} / {r['max_passes']}", f"{r['changed_codes_per_image']:.1f}",
       f"{r['naive']['prior_tables_per_image']:.0f} / "
       f"{r['batched']['prior_tables_per_image']:.1f} / "
       f"{r['refilled']['prior_tables_per_image']:.1f}",
       *(f"{r[mode]['images_per_s']:.4g}" for mode in ("naive", "batched", "refilled")),
       speedup(r, "naive"), speedup(r, "batched")] for r in rows])


def _header(data: dict) -> list[str]:
  env, s = data["environment"], data["settings"]
  on_cpu = s["device"] == "cpu"
  where = (f"**CPU figures** ({env['cpu']}, {env['cpu_count']} cores) — not GPU numbers"
           if on_cpu else f"GPU: {env.get('torch_cuda_device') or env['jax_device']}")
  v = env["versions"]
  done = data.get("complete", True)
  lines = [
      f"# vqjax vs PyTorch — preset `{s['preset']}`, {where}", "",
      *([] if done else [f"**Incomplete run**: {len(data['results'])} configurations measured "
                         "before it stopped.", ""]),
      f"- date (UTC): {env['date_utc']}; command: `{env['command']}`",
      f"- model: {s['model']}; images {s['image_size']}x{s['image_size']}x3",
      f"- versions: jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, flax {v.get('flax')}, "
      f"optax {v.get('optax')}, torch {v.get('torch')}"
      + (f"; CUDA (torch) {env.get('torch_cuda_version')}, cuDNN {env.get('cudnn_version')}, "
         f"JAX platform {env.get('jax_platform_version')!r}, driver/GPU: {env.get('nvidia_smi')}"
         if not on_cpu else ""),
      f"- float32 precision: `{s['fp32_precision']}`"
      + (" (TF32 does not exist on the CPU: no effect there)" if on_cpu else "")
      + " — JAX jax_default_matmul_precision="
      f"`{env['jax_default_matmul_precision']}`; torch "
      + ", ".join(f"{key}={value}" for key, value in env["torch_precision"].items()),
      f"- timing: {s['repeats']} timed calls after {s['warmup']} warm-up calls per configuration, "
      f"{s['input_batches']} distinct input batches rotated, each call synchronised; "
      f"images/s = batch / median call time",
      f"- CPU intra-op threads: {s['cpu_threads']} (XLA CPU single-threaded: "
      f"{s['xla_cpu_single_thread']}); XLA_PYTHON_CLIENT_PREALLOCATE="
      f"{env['env'].get('XLA_PYTHON_CLIENT_PREALLOCATE')}",
      f"- compile caches: torch inductor {s.get('torch_compile_caches')}; JAX persistent "
      f"compilation cache dir {s.get('jax_compilation_cache_dir')}",
  ]
  return lines + ["", *LEGEND]


LEGEND = [
    "Columns: *first call s* = wall time from nothing to the first synchronised result "
    "(tracing, compilation, autotuning, lazy init included; excluded from the steady-state "
    "columns); *compile s* = JAX ahead-of-time compile measured alone (inside the first "
    "call), torch.compile estimated as first call − median, n/a for eager; *peak MiB* = GPU "
    "only: torch `max_memory_allocated` since a reset before the configuration, JAX "
    "`peak_bytes_in_use` (process-wide and monotone: `≤` marks a value this configuration "
    "did not raise, an upper bound of its own peak; XLA's per-program size is in the JSON); "
    "*×* = images/s ratio to that torch variant at the same batch (> 1 = faster); "
    "*max |Δ|* = agreement with vqjax fp32 on the first input batch of the smallest batch "
    "size (bf16 and TF32 change the maps; |Δ| of SM = 1 − SSIM).",
]


def render(data: dict) -> str:
  results = data["results"]
  parts = data["settings"]["parts"]
  lines = _header(data)
  if "inference" in parts:
    lines += ["", "## Batch-1 latency, full anomaly-map pipeline", "", *latency_table(results)]
  if "train" in parts:
    lines += ["", "## Training step (loss, backward, Adam, codebook bookkeeping)", "",
              *train_table(results)]
  if "ssim" in parts:
    lines += ["", "## SSIM map alone (float32)", "", *ssim_table(results)]
  if "favae" in parts:
    lines += ["", "## FAVAE inference: VAE + VGG16 → merged log-density map", "",
              f"- model: {data['settings'].get('favae_model')}", "", *favae_table(results)]
  if "igd" in parts:
    lines += ["", "## IGD inference: global + local autoencoders → MS-SSIM / GSVDD map", "",
              f"- model: {data['settings'].get('igd_model')}", "", *igd_table(results)]
  if "igd_train" in parts:
    lines += ["", "## IGD training step: both scales' autoencoders and critics, two Adam updates",
              "", "- no PyTorch twin of the training step: absolute figures only (torch "
              "ratios n/a); the encoder trains too (no distilled encoder, which would be frozen)",
              f"- model: {data['settings'].get('igd_model')}", "", *igd_train_table(results)]
  deploy_titles = {"deploy": "SM and SSIM+AM maps", "deploy_favae": "FAVAE's merged map",
                   "deploy_igd": "IGD's Eq. 12 map",
                   "deploy_resample": "latent resampling's Eq. 6 map (bilateral-filtered)"}
  for part in (p for p in DEPLOY_PARTS if p in parts):
    model = {"deploy_favae": "favae_model", "deploy_igd": "igd_model",
             "deploy_resample": "resample_model"}.get(part)
    lines += ["", f"## CPU deployment: uint8 images → {deploy_titles[part]}, same weights", "",
              "- rows: benchmarks/deploy_cases.py; p50 = median of the timed calls; *× best "
              "other row* = vqjax images/s over the fastest non-vqjax row at that batch; "
              "agreement on the first input batch of the smallest batch (*rel.*: relative to "
              "the map's largest value)",
              *([f"- model: {data['settings'].get(model)}"] if model else []), "",
              *deploy_table(results, part)]
  if "inference" in parts:
    lines += ["", "## Inference: model → reconstruction → SSIM and SSIM+AM maps", "",
              *inference_table(results)]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  if len(argv) != 1:
    raise SystemExit("usage: python -m benchmarks.report RESULTS.json")
  path = pathlib.Path(argv[0])
  markdown = render(json.loads(path.read_text(encoding="utf-8")))
  path.with_suffix(".md").write_text(markdown, encoding="utf-8")
  print(markdown)


if __name__ == "__main__":
  main(sys.argv[1:])
