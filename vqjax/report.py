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


def summary_markdown(metrics: dict, variants: list[str], baselines: dict, run: dict) -> str:
  """A Markdown table of AUROCs per variant (and baselines) plus run facts."""
  lines = [f"# {run['method']} on `{run['category']}`", "",
           f"data: {run['data']} | image size {run['image_size']} | steps {run['steps']} | "
           f"train {run['train_seconds']:.0f} s on {run['devices']}", "",
           "| map | pixel AUROC | image AUROC |", "|---|---|---|"]
  rows = [(v, metrics[v]) for v in variants] + [(f"baseline: {b}", r) for b, r in baselines.items()]
  for name, r in rows:
    lines.append(f"| {name} | {r['pixel_auroc']:.4f} | {r['image_auroc']:.4f} |")
  if "codebook" in run:
    cb = run["codebook"]
    lines += ["", f"codebook on training images: {cb['fraction_used']:.1%} of "
              f"{cb['num_codes']} codes used, perplexity {cb['perplexity']:.1f}"]
  lines += ["", "Overlays: `overlays/*.png` (image | reconstruction | maps | ground truth)."]
  return "\n".join(lines) + "\n"


def _to_rgb_cell(image: np.ndarray) -> np.ndarray:
  """[H,W,C] float in [0,1] (C=1 or 3) -> [S,S,3] uint8 (nearest upscale for visibility)."""
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
  pil = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
  return np.asarray(pil.resize((_OVERLAY_CELL, _OVERLAY_CELL), Image.NEAREST))


def _heat(image: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Blends a jet colouring of amap (scaled by the split-wide [lo, hi]) over the image."""
  norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
  colours = matplotlib.colormaps["jet"](norm)[..., :3]
  grey = image.mean(axis=-1, keepdims=True)
  return 0.5 * grey + 0.5 * colours


def write_overlays(folder: pathlib.Path, images, reconstructions, maps: dict, masks, names,
                   indices) -> list[pathlib.Path]:
  """One PNG per selected test image: image | reconstruction | one heatmap per map | mask.

  images, reconstructions [N,H,W,C] in [0,1]; maps {name: [N,H,W]}; masks [N,H,W] bool.
  Colour scales are shared across the split (1st..99.9th percentile) so images compare.
  """
  folder.mkdir(parents=True, exist_ok=True)
  ranges = {k: (float(np.percentile(m, 1)), float(np.percentile(m, 99.9))) for k, m in maps.items()}
  titles = ["image", "reconstruction", *maps.keys(), "ground truth"]
  written = []
  for i in indices:
    panels = [images[i], reconstructions[i]]
    panels += [_heat(images[i], m[i], *ranges[k]) for k, m in maps.items()]
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
