"""In-memory datasets shared by every reader (MVTec folders, UCSD clips, one-vs-rest sets)."""
from __future__ import annotations

import dataclasses

import numpy as np

from vqjax.data.files import ImageFiles


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no boolean ==
class Split:
  """One split, fully decoded.

  images:   [N,H,W,C] uint8, C in {1,3}; or ImageFiles (training images decoded on demand).
  masks:    [N,H,W] bool, True = anomalous pixel; all False for normal images (for a split of
            normal images a read-only broadcast of one all-False mask: no N x H x W bytes).
  labels:   [N] int32, 0 = normal, 1 = anomalous.
  names:    N identifiers, e.g. paths relative to <root>/<category> ('test/scratch/003.png').
  has_mask: [N] bool, False where no pixel ground truth exists (pixel metrics skip those
            images); None = every image has one.
  """

  images: np.ndarray
  masks: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...]
  has_mask: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.names)
    if self.images.ndim != 4 or self.images.shape[0] != n:
      raise ValueError(f"Split.images must be [N={n},H,W,C], got {self.images.shape}")
    if self.masks.shape != self.images.shape[:3]:
      raise ValueError(f"Split.masks must be {self.images.shape[:3]}, got {self.masks.shape}")
    if self.labels.shape != (n,):
      raise ValueError(f"Split.labels must be [{n}], got {self.labels.shape}")
    if self.has_mask is not None and self.has_mask.shape != (n,):
      raise ValueError(f"Split.has_mask must be [{n}], got {self.has_mask.shape}")

  def __len__(self) -> int:
    return len(self.names)

  @property
  def pixel_mask_available(self) -> np.ndarray:
    """[N] bool: images whose masks are ground truth."""
    if self.has_mask is None:
      return np.ones(len(self), bool)
    return self.has_mask

  def take(self, index: np.ndarray) -> "Split":
    index = np.arange(len(self))[index]  # boolean masks too
    images = (self.images.take(index) if isinstance(self.images, ImageFiles)
              else self.images[index])
    masks = (self.masks[index] if self.masks.strides[0] else  # all-False masks of normal
             np.broadcast_to(self.masks[:1], (len(index), *self.masks.shape[1:])))  # images
    return Split(images=images, masks=masks,
                 labels=self.labels[index], names=tuple(self.names[i] for i in index),
                 has_mask=None if self.has_mask is None else self.has_mask[index])


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A category: train and val (disjoint slices of the normal training images) and test."""

  category: str
  train: Split
  val: Split
  test: Split

  @property
  def num_channels(self) -> int:
    return int(self.train.images.shape[-1])


def validation_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (val, train) indices into n normal training images; deterministic from `seed`."""
  num_val = max(1, round(val_fraction * n)) if (val_fraction > 0 and n >= 2) else 0
  permutation = np.random.default_rng(seed).permutation(n)
  return np.sort(permutation[:num_val]), np.sort(permutation[num_val:])


def hold_out_validation(category: str, train_normal: Split, test: Split, val_fraction: float,
                        seed: int) -> Dataset:
  """Dataset whose val split is a seeded slice of the normal training images."""
  val_index, train_index = validation_indices(len(train_normal), val_fraction, seed)
  return Dataset(category=category, train=train_normal.take(train_index),
                 val=train_normal.take(val_index), test=test)
