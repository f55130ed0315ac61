"""Reader for datasets in the MVTec AD on-disk layout (host-side NumPy/PIL only).

Layout of one category::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect>/*.png              (defect 'good' = normal)
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (every non-good test image)

Test (and validation) images are decoded into memory, resized to a square `image_size`;
training images too, or, with decode_cache_mb, when a batch needs them (vqjax.data.files).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import numbers
import pathlib

import numpy as np
from PIL import Image

from vqjax.data.dataset import Dataset, Split, hold_out_validation
from vqjax.data.files import ImageFiles
# Decoding lives in vqjax.image_files, shared with `predict` and the exported-model loader.
from vqjax.image_files import (IMAGE_EXTENSIONS, SIXTEEN_BIT_MODES, channels_for, image_array,
                               is_image_file as _is_image_file, read_image)

NORMAL_DEFECT = "good"
logger = logging.getLogger("vqjax")

_EXPECTED_LAYOUT = (
    "expected MVTec AD layout:\n"
    "  <root>/<category>/train/good/*.png\n"
    "  <root>/<category>/test/<defect>/*.png   (defect 'good' = normal)\n"
    "  <root>/<category>/ground_truth/<defect>/<stem>_mask.png"
)


def list_categories(root) -> list[str]:
  """Sorted names of the sub-folders of `root` that contain train/good."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"MVTec root folder {root} does not exist; {_EXPECTED_LAYOUT}")
  return sorted(
      entry.name for entry in root.iterdir()
      if not entry.name.startswith(".") and (entry / "train" / NORMAL_DEFECT).is_dir()
  )


def load_mvtec(root, category: str, image_size: int, val_fraction: float = 0.1,
               seed: int = 0, decode_cache_mb: float | None = None) -> Dataset:
  """Load one category, resized to [image_size, image_size].

  The validation split is a seeded random slice of train/good (never test images);
  its size is max(1, round(val_fraction * n)) when val_fraction > 0 and n >= 2, else 0.
  decode_cache_mb: None decodes every image now; a number leaves the training images as
  files decoded when fed (ImageFiles), keeping up to that many MB of them decoded (val and
  test, which every process evaluates whole, are decoded now either way).
  """
  check_image_size(image_size)
  check_val_fraction(val_fraction)
  root = pathlib.Path(root)
  category_dir = _category_dir(root, category)

  train_paths = _image_files(category_dir / "train" / NORMAL_DEFECT, category_dir)
  test_items = _test_items(category_dir)
  num_channels = channels_for([*train_paths, *(p for p, _ in test_items)])
  logger.info("category %s: %s images", category, "greyscale" if num_channels == 1 else "RGB")
  if decode_cache_mb is None:
    train_good = _load_split(category_dir, [(p, None) for p in train_paths], image_size,
                             num_channels)
  else:
    train_good = Split(
        images=ImageFiles(train_paths, image_size, num_channels, int(decode_cache_mb * 2**20)),
        masks=np.broadcast_to(np.zeros((1, image_size, image_size), bool),
                              (len(train_paths), image_size, image_size)),
        labels=np.zeros(len(train_paths), np.int32),
        names=tuple(p.relative_to(category_dir).as_posix() for p in train_paths))

  test = _load_split(category_dir, test_items, image_size, num_channels)

  dataset = hold_out_validation(category, train_good, test, val_fraction, seed)
  if isinstance(dataset.val.images, ImageFiles):
    dataset = dataclasses.replace(dataset, val=dataclasses.replace(
        dataset.val, images=np.asarray(dataset.val.images)))
  return dataset


# --- argument checks -------------------------------------------------------------------


def check_image_size(image_size) -> None:
  if (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
          or image_size < 8):
    raise ValueError(f"data.image_size must be an int >= 8, got {image_size!r}")


def check_val_fraction(val_fraction) -> None:
  ok = (isinstance(val_fraction, numbers.Real) and not isinstance(val_fraction, bool)
        and math.isfinite(val_fraction) and 0.0 <= val_fraction <= 0.5)
  if not ok:
    raise ValueError(f"data.val_fraction must be a number in [0, 0.5], got {val_fraction!r}")


# --- folder discovery ------------------------------------------------------------------


def _category_dir(root: pathlib.Path, category: str) -> pathlib.Path:
  found = list_categories(root)  # raises if root is missing
  category_dir = root / category
  if not category_dir.is_dir():
    raise FileNotFoundError(
        f"category folder {category_dir} does not exist; categories found under {root}: "
        f'{found or "none"}; {_EXPECTED_LAYOUT}')
  return category_dir


def _image_files(folder: pathlib.Path, category_dir: pathlib.Path) -> list[pathlib.Path]:
  """Sorted image files of a folder that must exist and hold at least one image."""
  if not folder.is_dir():
    raise FileNotFoundError(f"folder {folder} does not exist in {category_dir}; "
                            f"{_EXPECTED_LAYOUT}")
  files = sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)
  if not files:
    raise FileNotFoundError(
        f"folder {folder} holds no images (extensions {sorted(IMAGE_EXTENSIONS)}); "
        f"{_EXPECTED_LAYOUT}")
  return files


def _test_items(category_dir: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path | None]]:
  """(image, mask or None) for every test image, sorted by defect folder then file name."""
  test_dir = category_dir / "test"
  if not test_dir.is_dir():
    raise FileNotFoundError(f"folder {test_dir} does not exist; {_EXPECTED_LAYOUT}")
  defect_dirs = sorted((d for d in test_dir.iterdir()
                        if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
  items = []
  for defect_dir in defect_dirs:
    for image_path in sorted((p for p in defect_dir.iterdir() if _is_image_file(p)),
                             key=lambda p: p.name):
      is_normal = defect_dir.name == NORMAL_DEFECT
      items.append((image_path, None if is_normal else _mask_path(category_dir, image_path)))
  if not items:
    raise FileNotFoundError(f"folder {test_dir} holds no images in any <defect> sub-folder; "
                            f"{_EXPECTED_LAYOUT}")
  return items


def _mask_path(category_dir: pathlib.Path, image_path: pathlib.Path) -> pathlib.Path:
  """ground_truth/<defect>/<stem>_mask.png, or the same stem with another image extension."""
  mask_dir = category_dir / "ground_truth" / image_path.parent.name
  expected = mask_dir / f"{image_path.stem}_mask.png"
  if expected.is_file():
    return expected
  if mask_dir.is_dir():
    for candidate in sorted(mask_dir.iterdir()):
      if candidate.stem == expected.stem and _is_image_file(candidate):
        return candidate
  raise FileNotFoundError(
      f"defective test image {image_path} has no ground-truth mask; expected {expected}")


# --- decoding --------------------------------------------------------------------------


def binarise_mask(image: Image.Image) -> np.ndarray:
  """[H,W] bool at the mask's own resolution.

  Mode '1': any set pixel. 8-bit: > 127 (MVTec masks are 0/255; the midpoint is robust
  to anti-aliased or JPEG-ish edges). 16-bit: > 32767. A mask whose maximum is 1 is a 0/1
  label image, so there any nonzero value counts.
  """
  if image.mode == "1":
    return np.asarray(image, dtype=bool)
  if image.mode in SIXTEEN_BIT_MODES:
    values, midpoint = np.asarray(image), 32767
  else:
    values, midpoint = np.asarray(image.convert("L")), 127
  if values.max(initial=0) <= 1:
    return values > 0
  return values > midpoint


def _mask_array(mask_path: pathlib.Path, image_size: int) -> np.ndarray:
  """[image_size, image_size] bool: binarised at full resolution, then NEAREST resize."""
  binary = binarise_mask(read_image(mask_path)).astype(np.uint8) * 255
  resized = Image.fromarray(binary).resize((image_size, image_size), Image.Resampling.NEAREST)
  return np.asarray(resized) > 0


def _load_split(category_dir: pathlib.Path, items, image_size: int, num_channels: int) -> Split:
  """items: (image path, mask path or None for a normal image)."""
  n = len(items)
  images = np.zeros((n, image_size, image_size, num_channels), np.uint8)
  masks = np.zeros((n, image_size, image_size), bool)
  labels = np.zeros((n,), np.int32)


  def decode(i: int) -> None:
    image_path, mask_path = items[i]
    images[i] = image_array(read_image(image_path), num_channels, image_size)
    if mask_path is not None:
      masks[i] = _mask_array(mask_path, image_size)
      labels[i] = 1

  # PNG decoding and resizing release the GIL: threads overlap them (full-size MVTec images
  # are 700-1024 px); each thread writes its own rows, and errors propagate via list().
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    list(pool.map(decode, range(n)))
  names = tuple(p.relative_to(category_dir).as_posix() for p, _ in items)
  return Split(images=images, masks=masks, labels=labels, names=names)


# --- validation slice ------------------------------------------------------------------


