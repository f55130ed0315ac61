"""Run outputs: metrics.json, summary.md, heatmap overlays, eval_arrays.npz.

Every file is written to a temporary sibling and moved into place, so a run that dies
never leaves a half-written result behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from vqjax import metrics as metrics_lib

_OVERLAY_CELL = 160  # pixels per panel side in overlay PNGs


def _current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: pathlib.Path):
  """Yields a temporary path in path's folder; renames it to `path` only on success."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; use the usual mode
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: pathlib.Path, obj) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_text(path: pathlib.Path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")


def save_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **arrays)


# (metrics.json key, column title) of the per-map tables, in display order.
METRIC_COLUMNS = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC (pooled)"),
    ("per_image_pixel_auroc", "pixel AUROC (per-image mean)"),
    ("au_pro", "AU-PRO"),
    ("image_f1_max", "image F1-max"),
    ("pixel_f1_max", "pixel F1-max"),
    ("image_accuracy", "image accuracy @thr"),
    ("image_f1", "image F1 @thr"),
    ("pixel_f1", "pixel F1 @thr"),
    ("pro", "PRO @thr"),
)


def format_metric(value) -> str:
  return "–" if value is None else f"{value:.4f}"


def summary_markdown(metrics: dict, variants: list[str], baselines: dict, run: dict) -> str:
  """A Markdown table of every metric per map (variants and baselines) plus run facts."""
  columns = [(k, t) for k, t in METRIC_COLUMNS if any(k in metrics[v] for v in variants)]
  lines = [f"# {run['method']} on `{run['category']}`", "",
           f"data: {run['data']} | image size {run['image_size']} | steps {run['steps']} | "
           f"train {run['train_seconds']:.0f} s on {run['devices']}", "",
           "| map | " + " | ".join(t for _, t in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  rows = [(v, metrics[v]) for v in variants] + [(f"baseline: {b}", r) for b, r in baselines.items()]
  for name, r in rows:
    lines.append(f"| {name} | " + " | ".join(format_metric(r.get(k)) for k, _ in columns) + " |")
  first = metrics[variants[0]]
  if "threshold" in first:
    lines += ["", f"@thr: threshold fitted on the normal validation maps only (Bergmann et al.: "
              f"largest connected component < {first['threshold']['min_area']} px on every "
              f"validation map); image accuracy = mean of the accuracies on normal and on "
              f"anomalous test images. AU-PRO integrated to FPR 0.3, normalised."]
  facts = [f"- {key}: {_compact(run[key])}" for key in run.get("method_info", ())]
  if facts:
    lines += ["", f"{run['method']}:", *facts]
  lines += ["", "Pictures: `overlays/*.png` (image | reconstruction | maps | ground truth), "
            "`roc_image.png`, `roc_pixel.png`, `pro.png`."]
  return "\n".join(lines) + "\n"


def _compact(value) -> str:
  """One line for a run fact: floats to 4 significant digits, dicts as key value pairs."""
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, dict):
    return ", ".join(f"{k} {_compact(v)}" for k, v in value.items())
  return str(value)


def _save_figure(fig, path: pathlib.Path) -> None:
  with atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_curves(workdir: pathlib.Path, maps: dict, split, eval_config) -> None:
  """ROC (image, pixel) and PRO curves of every map on the test split, as PNGs."""
  from matplotlib.figure import Figure  # no pyplot: no global figure state, no display
  from sklearn.metrics import roc_curve

  pixel_idx = np.flatnonzero(split.pixel_mask_available)
  with_pixels = pixel_idx.size > 0 and split.masks[pixel_idx].any()
  plots = [("roc_image.png", "image ROC", "FPR", "TPR")]
  if with_pixels:
    plots += [("roc_pixel.png", "pixel ROC (pooled)", "FPR", "TPR"),
              ("pro.png", f"PRO up to FPR {eval_config.pro_fpr_limit}", "FPR (normal pixels)",
               "per-region overlap")]
  for filename, title, xlabel, ylabel in plots:
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot()
    for name, m in maps.items():
      if filename == "roc_image.png":
        scores = metrics_lib.image_scores(m, eval_config.image_score)
        x, y, _ = roc_curve(split.labels, scores)
      elif filename == "roc_pixel.png":
        x, y, _ = roc_curve(split.masks[pixel_idx].reshape(-1), m[pixel_idx].reshape(-1))
      else:
        x, y, _ = metrics_lib.pro_curve(m[pixel_idx], split.masks[pixel_idx],
                                        max_fpr=eval_config.pro_fpr_limit)
      ax.plot(x, y, label=name, lw=1.3)
    if filename == "pro.png":
      ax.set_xlim(0, eval_config.pro_fpr_limit)
    else:
      ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls="--")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    _save_figure(fig, workdir / filename)


def _to_rgb_cell(image: np.ndarray) -> np.ndarray:
  """[H,W,C] float in [0,1] (C=1 or 3) -> [S,S,3] uint8 (nearest upscale for visibility)."""
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  pil = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
  return np.asarray(pil.resize((_OVERLAY_CELL, _OVERLAY_CELL), Image.NEAREST))


def heat_overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """[H,W,3] in [0,1]: a jet colouring of amap (scaled by [lo, hi]) blended over the image
  (image [H,W,C] in [0,1])."""
  norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
  colours = matplotlib.colormaps["jet"](norm)[..., :3]
  grey = image.mean(axis=-1, keepdims=True)
  return 0.5 * grey + 0.5 * colours


def write_overlays(folder: pathlib.Path, images, reconstructions, maps: dict, masks, names,
                   indices) -> list[pathlib.Path]:
  """One PNG per selected test image: image | reconstruction | one heatmap per map | mask.

  images [N,H,W,C] in [0,1]; reconstructions likewise, or None for a method without an
  image-space reconstruction (no panel); maps {name: [N,H,W]}; masks [N,H,W] bool.
  Colour scales are shared across the split (1st..99.9th percentile) so images compare.
  """
  folder.mkdir(parents=True, exist_ok=True)
  ranges = {k: (float(np.percentile(m, 1)), float(np.percentile(m, 99.9))) for k, m in maps.items()}
  titles = ["image", *(["reconstruction"] if reconstructions is not None else []),
            *maps.keys(), "ground truth"]
  written = []
  for i in indices:
    panels = [images[i]] + ([reconstructions[i]] if reconstructions is not None else [])
    panels += [heat_overlay(images[i], m[i], *ranges[k]) for k, m in maps.items()]
    panels.append(masks[i][..., None].astype(np.float32))
    row = np.concatenate([_to_rgb_cell(p) for p in panels], axis=1)
    canvas = Image.new("RGB", (row.shape[1], row.shape[0] + 18), "white")
    canvas.paste(Image.fromarray(row), (0, 18))
    draw = ImageDraw.Draw(canvas)
    for j, t in enumerate(titles):
      draw.text((j * _OVERLAY_CELL + 4, 3), t, fill="black")
    path = folder / (names[i].replace("/", "_").rsplit(".", 1)[0] + ".png")
    with atomic_path(path) as tmp:
      canvas.save(tmp, format="PNG")
    written.append(path)
  return written


def pick_overlay_indices(labels: np.ndarray, count: int) -> list[int]:
  """Up to `count` test indices, mostly anomalous, evenly spread, with some normal ones."""
  anomalous, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
  n_normal = min(len(normal), max(1, count // 4)) if count > 1 else 0
  n_anom = min(len(anomalous), count - n_normal)
  spread = lambda idx, k: idx[np.linspace(0, len(idx) - 1, k).round().astype(int)] if k else []
  return sorted(set(map(int, spread(anomalous, n_anom))) | set(map(int, spread(normal, n_normal))))


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _paper_cell(value: float) -> str:
  """A published number as printed (2 to 4 decimals: 0.95, 0.953, 0.9912)."""
  text = f"{value:.4f}"
  while text.endswith("0") and len(text.split(".")[1]) > 2:
    text = text[:-1]
  return text


def results_tables(per_category: dict[str, dict], variants: list[str], dataset: str
                   ) -> tuple[str, str]:
  """(results.md, results.csv) of a sweep: one row per category and a mean row.

  The Markdown table has, per variant, the main metrics and, where the paper reports this
  category, the paper's number beside ours; the CSV has every metric of every map.
  """
  from vqjax.paper_results import paper_values  # local: only sweeps need it
  categories = list(per_category)
  maps = variants + [f"baseline_{b}" for b in next(iter(per_category.values()))["baselines"]]

  def metrics_of(category, name):
    m = per_category[category]
    return m["baselines"][name[len("baseline_"):]] if name.startswith("baseline_") else m[name]

  keys = [k for k, _ in METRIC_COLUMNS]
  csv_lines = ["category,map," + ",".join(keys)]
  for category in categories + ["mean"]:
    for name in maps:
      if category == "mean":
        row = [_mean(metrics_of(c, name).get(k) for c in categories) for k in keys]
      else:
        row = [metrics_of(category, name).get(k) for k in keys]
      csv_lines.append(f"{category},{name}," + ",".join("" if v is None else f"{v:.6f}" for v in row))

  paper = {(c, v): dict(paper_values(dataset, c, v)) for c in categories + ["mean"] for v in maps}
  shown = [("pixel_auroc", "pixel AUROC"), ("image_auroc", "image AUROC"), ("au_pro", "AU-PRO"),
           ("image_accuracy", "image acc.")]
  # A metric a paper reports for one of these maps is shown for ours too (e.g. Wang's PRO).
  reported = {k for p in paper.values() for k in p}
  shown += [(k, label) for k, label in METRIC_COLUMNS
            if k in reported and k not in {key for key, _ in shown}]
  shown = [(k, t) for k, t in shown
           if any(metrics_of(c, variants[0]).get(k) is not None for c in categories)]
  # Per variant, the metrics some paper reports for it on one of these rows: one column each.
  order = [k for k, _ in shown] + [k for k, _ in METRIC_COLUMNS]  # as our columns
  paper_metrics = {v: sorted({k for c in categories + ["mean"] for k in paper[(c, v)]},
                             key=lambda k: order.index(k) if k in order else len(order))
                   for v in maps}
  header, rows = ["category"], []
  for v in maps:
    header += [f"{v} {t}" for _, t in shown]
    header += [f"{v} paper ({metric.replace('_', ' ')})" for metric in paper_metrics[v]]
  for category in categories + ["mean"]:
    cells = [f"**{category}**" if category == "mean" else category]
    for v in maps:
      values = ([_mean(metrics_of(c, v).get(k) for c in categories) for k, _ in shown]
                if category == "mean" else [metrics_of(category, v).get(k) for k, _ in shown])
      cells += [format_metric(x) for x in values]
      for metric in paper_metrics[v]:
        p = paper[(category, v)].get(metric)
        cells.append("–" if p is None else _paper_cell(p))
    rows.append("| " + " | ".join(cells) + " |")
  md = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *rows]
  return "\n".join(md) + "\n", "\n".join(csv_lines) + "\n"
