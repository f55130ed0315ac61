"""Square tiles (non-overlapping) and patches (overlapping) of images, and their per-tile or
per-patch maps stitched back.

For methods that work on crops of larger images (FAVAE's textures, Dehaene & Eline §5.1: 512
px images seen as 16 tiles of 128 px). Tiles are in raster order within each image.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def tile_images(images, size: int):
  """[B,S,S,C] -> [B*(S/size)^2, size, size, C] (identity when S = size)."""
  batch, height, width, channels = images.shape
  if height % size or width % size:
    raise ValueError(f"images of {height}x{width} px do not split into {size} px tiles")
  if height == width == size:
    return images
  rows, cols = height // size, width // size
  tiles = images.reshape(batch, rows, size, cols, size, channels).transpose(0, 1, 3, 2, 4, 5)
  return tiles.reshape(batch * rows * cols, size, size, channels)


def untile_maps(tiles, batch: int, grid: int):
  """Inverse of tile_images for square images of grid x grid tiles: [B*grid^2, s, s, ...]
  -> [B, grid*s, grid*s, ...] (maps [.., s, s] or images [.., s, s, C])."""
  if grid == 1:
    return tiles
  size = tiles.shape[1]
  rest = tiles.shape[3:]
  x = tiles.reshape(batch, grid, grid, size, size, *rest)
  x = jnp.moveaxis(x, 2, 3)  # [B, grid, s, grid, s, ...]
  return x.reshape(batch, grid * size, grid * size, *rest)


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
  """Top-left offsets of `patch` px windows every `stride` px along a side of `size` px."""
  if patch > size or (size - patch) % stride:
    raise ValueError(f"{patch} px patches every {stride} px do not cover {size} px exactly "
                     f"(need (size - patch) divisible by stride)")
  return list(range(0, size - patch + 1, stride))


def overlapping_patches(images, patch: int, stride: int):
  """[B,S,S,C] -> [B*P, patch, patch, C], P = n^2 windows in raster order (torch's unfold)."""
  starts = patch_starts(images.shape[1], patch, stride)
  windows = [images[:, i:i + patch, j:j + patch] for i in starts for j in starts]
  stacked = jnp.stack(windows, axis=1)  # [B, P, patch, patch, C]
  return stacked.reshape(-1, *stacked.shape[2:])


def stitch_patch_maps(maps, batch: int, size: int, stride: int):
  """Inverse of overlapping_patches for maps [B*P, p, p] -> [B, S, S]: every pixel gets the
  mean over the patches that cover it (IGD's code sums them without dividing by coverage)."""
  patch = maps.shape[1]
  starts = patch_starts(size, patch, stride)
  maps = maps.reshape(batch, len(starts) ** 2, patch, patch)
  total = jnp.zeros((batch, size, size), maps.dtype)
  coverage = np.zeros((size, size), np.float32)
  k = 0
  for i in starts:
    for j in starts:
      total = total.at[:, i:i + patch, j:j + patch].add(maps[:, k])
      coverage[i:i + patch, j:j + patch] += 1
      k += 1
  return total / jnp.asarray(coverage, maps.dtype)
