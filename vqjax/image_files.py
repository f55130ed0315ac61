"""Reading image files into model inputs, with NumPy and Pillow only: the one decoding path
of the dataset readers, `predict` and the stand-alone loader of exported models."""
from __future__ import annotations

import contextlib
import pathlib

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Greyscale modes that stay single-channel; the 16-bit ones are scaled to 8 bits.
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
GREY_MODES = frozenset({"L"}) | SIXTEEN_BIT_MODES


def is_image_file(path: pathlib.Path) -> bool:
  return (not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
          and path.is_file())


def channels_for(paths) -> int:
  """1 when every file is greyscale, else 3: one colour file makes the set RGB (grey ones are
  then replicated), so colour is never dropped because of the first file's mode. Reads only
  the headers."""
  for path in paths:
    with _opened(path) as image:
      if image.mode not in GREY_MODES:
        return 3
  return 1


@contextlib.contextmanager
def _opened(path):
  """The opened PIL image; any decoding error (also one raised while using it) becomes a
  ValueError naming the file."""
  try:
    with Image.open(path) as image:
      yield image
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise ValueError(f"cannot decode image file {path}: {error}") from error


def read_image(path: pathlib.Path) -> Image.Image:
  """Fully decoded PIL image; ValueError naming the file if it cannot be decoded."""
  with _opened(path) as image:
    image.load()  # decode now, so a truncated file fails here, naming the file
    return image


def to_eight_bit_grey(image: Image.Image) -> Image.Image:
  """Mode 'L' image; 16-bit greyscale is scaled from [0, 65535] to [0, 255]."""
  if image.mode in SIXTEEN_BIT_MODES:
    values = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))
  return image.convert("L")


def _converted(image: Image.Image, num_channels: int) -> Image.Image:
  """Mode 'L' (num_channels 1) or 'RGB' (3); 16-bit grey scaled to 8 bits first."""
  if num_channels == 1:
    return to_eight_bit_grey(image)
  if image.mode in SIXTEEN_BIT_MODES:
    return to_eight_bit_grey(image).convert("RGB")
  return image.convert("RGB")  # also drops alpha and handles P/CMYK/LA


def image_array(image: Image.Image, num_channels: int, image_size: int) -> np.ndarray:
  """[image_size, image_size, num_channels] uint8, bilinear resize."""
  resized = _converted(image, num_channels).resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(resized, dtype=np.uint8).reshape(image_size, image_size, num_channels)


def display_rgb(image: Image.Image) -> np.ndarray:
  """[H,W,3] uint8 of an image at its own size, for overlays (16-bit grey scaled to 8 bits)."""
  return np.asarray(_converted(image, 3), np.uint8)
