"""Non-overlapping square tiles of images, and their per-tile maps stitched back.

For methods that work on crops of larger images (FAVAE's textures, Dehaene & Eline §5.1: 512
px images seen as 16 tiles of 128 px). Tiles are in raster order within each image.
"""
from __future__ import annotations

import jax.numpy as jnp


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
