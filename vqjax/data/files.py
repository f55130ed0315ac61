"""Training images kept as files and decoded when a batch needs them.

A folder of 100k images at 256x256x3 is 20 GB decoded; every process of a multi-host run
holding all of it would be that much host memory per process, and decoding it all before the
first step would be minutes of idle accelerators. `ImageFiles` indexes like the [N,S,S,C]
uint8 array it stands for, but decodes only the rows asked for: the trainer asks for this
process's rows of each global batch (vqjax.sharding.process_rows), so each process decodes
only the images it feeds, while batches stay a pure function of (seed, step).
"""
from __future__ import annotations

import concurrent.futures
import os
import threading

import numpy as np

from vqjax.errors import UserInputError
from vqjax.image_files import image_array, read_image


class ImageFiles:
  """[N, image_size, image_size, num_channels] uint8 images as files, decoded on demand.

  Decoded images are kept while they fit in `cache_bytes`: the first ones decoded, no
  eviction (with a fresh random permutation per epoch any eviction order hits as rarely, and
  keeping costs no churn). The budget is per ImageFiles, i.e. per run and process; a
  per-device sweep holds one per category it runs at once. A category of MVTec AD fits
  whole; a 100k-image folder keeps cache_bytes' worth and decodes the rest again when fed
  again.
  """

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, paths, image_size: int, num_channels: int, cache_bytes: int):
    self.paths = tuple(paths)
    self.shape = (len(self.paths), image_size, image_size, num_channels)
    self._cache: dict[int, np.ndarray] = {}
    self._cache_limit = max(0, cache_bytes) // int(np.prod(self.shape[1:]))
    self._lock = threading.Lock()
    self.decoded = 0  # decodes so far (a file decoded again counts again)
    self.decoded_files: set[int] = set()

  def __len__(self) -> int:
    return self.shape[0]

  @property
  def cached(self) -> int:
    return len(self._cache)

  def _decode(self, i: int) -> np.ndarray:
    try:
      image = image_array(read_image(self.paths[i]), self.shape[3], self.shape[1])
    except ValueError as error:  # names the file; found when fed, not at load
      raise UserInputError(f"{error} (a training image, decoded when first fed); fix or "
                           "remove the file and rerun: the run resumes from its last "
                           "checkpoint") from None
    with self._lock:
      self.decoded += 1
      self.decoded_files.add(i)
    return image

  def __getitem__(self, index) -> np.ndarray:
    """Rows `index` (an int, a slice, an integer or boolean array) as a uint8 array."""
    if isinstance(index, tuple):
      raise IndexError("ImageFiles takes rows only (an int, a slice or an index array)")
    rows = np.arange(len(self))[index]
    if np.ndim(rows) == 0:
      return self[np.asarray([rows])][0]
    out = np.empty((len(rows), *self.shape[1:]), np.uint8)
    missing = []
    for k, i in enumerate(rows):
      cached = self._cache.get(int(i))
      if cached is None:
        missing.append((k, int(i)))
      else:
        out[k] = cached
    # PNG/JPEG decoding and resizing release the GIL: threads overlap them.
    unique = sorted({i for _, i in missing})
    if unique:
      workers = min(8, os.cpu_count() or 1, len(unique))
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        decoded = dict(zip(unique, pool.map(self._decode, unique)))
      for k, i in missing:
        out[k] = decoded[i]
      with self._lock:  # in index order, whichever thread finished first: deterministic
        for i in unique:
          if len(self._cache) < self._cache_limit:
            self._cache.setdefault(i, decoded[i])
    return out

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    array = self[np.arange(len(self))]
    return array if dtype is None else array.astype(dtype)

  def take(self, index) -> "ImageFiles":
    """The files of rows `index`, decoded on demand too (its own cache, same budget)."""
    rows = np.arange(len(self))[index]
    return ImageFiles([self.paths[i] for i in rows], self.shape[1], self.shape[3],
                      self._cache_limit * int(np.prod(self.shape[1:])))
