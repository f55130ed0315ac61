"""Embedded default dataset: synthetic defects on real photographs shipped with installed packages.

Nine greyscale photographs, each a category, are cut into crops in the MVTec AD layout (see
`vqjax.data.mvtec`); no network is needed. Three stationary textures from scikit-image
(`brick`, `grass`, `gravel`, 512x512, CC0) were the whole set up to version 1 and are unchanged
(byte for byte); version 2 adds six less regular images: scikit-image's `moon` (lunar surface),
`camera` (a scene), `tissue` (`immunohistochemistry`, stained colonic glands), `hubble`
(`hubble_deep_field`, galaxies on black), and scikit-learn's two sample photos `china` (a
temple) and `flower` (CC BY 2.0, see sklearn/datasets/images/README.txt). Colour photos are
converted to grey, and landscape photos are turned upright so that the test region holds a crop.

Train crops come from the top 3/4 of each photo, test crops from the bottom 1/4, so no test
image is a copy of a training image (for the scenes, the test region also shows other content
than the training region: a distribution shift the textures do not have). Test crops get one of
three synthetic defects, each with an exact mask: a pixel is in the mask iff the defect changed
its value, and every masked pixel differs from the clean crop by >= MIN_VISIBLE_CHANGE.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

# category -> (package, loader name), in the order that seeds each category's random streams
# (so a category's crops and defects do not depend on which others exist).
_PHOTO_SOURCES = {
    "brick": ("skimage", "brick"), "grass": ("skimage", "grass"),
    "gravel": ("skimage", "gravel"),  # version 1 ends here
    "moon": ("skimage", "moon"), "camera": ("skimage", "camera"),
    "tissue": ("skimage", "immunohistochemistry"), "hubble": ("skimage", "hubble_deep_field"),
    "china": ("sklearn", "china.jpg"), "flower": ("sklearn", "flower.jpg"),
}
DEMO_CATEGORIES = tuple(sorted(_PHOTO_SOURCES))
# cut_paste pastes a patch of one of these (another than the crop's own photo).
DONOR_CATEGORIES = ("brick", "grass", "gravel")
DEMO_VERSION = 2  # bump when the generator changes; part of the cache folder name
DEFECT_TYPES = ("cut_paste", "scratch", "stain")

MIN_VISIBLE_CHANGE = 8          # grey levels; every masked pixel changes at least this
DEFECT_AREA_RANGE = (0.005, 0.08)  # accepted fraction of the crop covered by a mask
_MAX_DEFECT_ATTEMPTS = 200      # rejection sampling on area; a few tries are typical
_TRAIN_REGION_FRACTION = 0.75   # top 3/4 of a photo -> train, bottom 1/4 -> test


def default_cache_dir() -> pathlib.Path:
  """$VQJAX_CACHE_DIR if set, else $XDG_CACHE_HOME/vqjax, else ~/.cache/vqjax."""
  if os.environ.get("VQJAX_CACHE_DIR"):
    return pathlib.Path(os.environ["VQJAX_CACHE_DIR"]).expanduser()
  if os.environ.get("XDG_CACHE_HOME"):
    return pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vqjax"
  return pathlib.Path.home() / ".cache" / "vqjax"


def ensure_demo_dataset(cache_dir=None) -> pathlib.Path:
  """MVTec-layout root <cache_dir>/demo_mvtec_v<DEMO_VERSION>, generated on first use."""
  cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  root = cache_dir / f"demo_mvtec_v{DEMO_VERSION}"
  if root.is_dir():  # generation is atomic, so an existing folder is complete
    return root
  cache_dir.mkdir(parents=True, exist_ok=True)
  try:
    generate_demo_dataset(root)
  except FileExistsError:
    if not root.is_dir():  # something other than a concurrent generator's result
      raise
  return root


def generate_demo_dataset(out_root, *, seed: int = 0, crop_size: int = 128, num_train: int = 80,
                          num_test_good: int = 20, num_test_per_defect: int = 12,
                          categories=DEMO_CATEGORIES) -> None:
  """Write the demo dataset to `out_root` (which must not exist) atomically.

  Images are 8-bit greyscale PNGs [crop_size, crop_size]; masks are 0/255 PNGs. The
  output is byte-identical for equal arguments, and each category's files do not depend on
  which other `categories` are written. Raises FileExistsError if `out_root` exists (also
  when another process created it while this one was generating).
  """
  out_root = pathlib.Path(out_root)
  unknown = sorted(set(categories) - set(DEMO_CATEGORIES))
  if unknown or not categories:
    raise ValueError(f"demo categories must be a non-empty subset of {list(DEMO_CATEGORIES)}, "
                     f"got {list(categories)}")
  photos = _load_photos()
  _check_generator_args(crop_size, min(photo.shape[0] for photo in photos.values()),
                        num_train, num_test_good, num_test_per_defect)
  if out_root.exists():
    raise FileExistsError(f"demo dataset folder {out_root} already exists")
  out_root.parent.mkdir(parents=True, exist_ok=True)
  # Build in a hidden sibling and rename it into place, so readers never see a
  # half-written dataset (os.replace is atomic within one file system).
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_root.name}.tmp-", dir=out_root.parent))
  try:
    for category in categories:
      _write_category(staging / category, photos, category, seed,
                      list(_PHOTO_SOURCES).index(category),
                      crop_size, num_train, num_test_good, num_test_per_defect)
    try:
      os.replace(staging, out_root)
    except OSError as error:
      if out_root.exists():
        raise FileExistsError(
            f"demo dataset folder {out_root} was created concurrently") from error
      raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)  # no-op after a successful rename


def _check_generator_args(crop_size, photo_size, *counts) -> None:
  test_rows = photo_size - int(photo_size * _TRAIN_REGION_FRACTION)
  if not 32 <= crop_size <= test_rows:
    raise ValueError(f"demo crop_size must be in [32, {test_rows}], got {crop_size}")
  if any(count < 0 for count in counts):
    raise ValueError(f"demo image counts must be >= 0, got {counts}")


def _load_photos() -> dict[str, np.ndarray]:
  """{category: [H,W] uint8} greyscale photos shipped with scikit-image / scikit-learn, H >= W."""
  return {category: _load_photo(*source) for category, source in _PHOTO_SOURCES.items()}


def _load_photo(package: str, name: str) -> np.ndarray:
  if package == "skimage":
    photo = np.asarray(getattr(skdata, name)())
  else:  # imported here: only the two scikit-learn photos need it
    from sklearn.datasets import load_sample_image
    photo = load_sample_image(name)
  if photo.ndim == 3:  # ITU-R 601 luma, as PIL's convert("L") and MVTec's grey categories
    photo = np.rint(photo[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114])
  if photo.shape[1] > photo.shape[0]:  # landscape: upright, for a taller test region
    photo = np.rot90(photo)
  return np.ascontiguousarray(photo, dtype=np.uint8)


def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path, format="PNG")


def _write_category(category_dir, photos, category, seed, category_index, crop_size,
                    num_train, num_test_good, num_test_per_defect) -> None:
  photo = photos[category]
  split_row = int(photo.shape[0] * _TRAIN_REGION_FRACTION)
  train_region, test_region = photo[:split_row], photo[split_row:]
  donors = [photos[name] for name in DONOR_CATEGORIES if name != category]

  # One generator per (category, stream): changing one count does not reshuffle the rest.
  def rng(stream: int) -> np.random.Generator:
    return np.random.default_rng((seed, category_index, stream))

  train_rng = rng(0)
  for i in range(num_train):
    _write_png(category_dir / "train" / "good" / f"{i:03d}.png",
               _random_crop(train_region, crop_size, train_rng))
  good_rng = rng(1)
  for i in range(num_test_good):
    _write_png(category_dir / "test" / "good" / f"{i:03d}.png",
               _random_crop(test_region, crop_size, good_rng))
  for defect_index, defect in enumerate(DEFECT_TYPES):
    defect_rng = rng(2 + defect_index)
    for i in range(num_test_per_defect):
      clean = _random_crop(test_region, crop_size, defect_rng)
      image, mask = make_defect(clean, defect, defect_rng, donors)
      _write_png(category_dir / "test" / defect / f"{i:03d}.png", image)
      _write_png(category_dir / "ground_truth" / defect / f"{i:03d}_mask.png",
                 mask.astype(np.uint8) * 255)


def _random_crop(region: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """[size,size] uint8 crop at a random position, with a random flip / 90-degree turn."""
  row = rng.integers(0, region.shape[0] - size + 1)
  col = rng.integers(0, region.shape[1] - size + 1)
  crop = np.rot90(region[row:row + size, col:col + size], k=int(rng.integers(4)))
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return np.ascontiguousarray(crop)


# --- defects ---------------------------------------------------------------------------


def make_defect(clean: np.ndarray, defect: str, rng: np.random.Generator,
                donors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Apply one random defect to `clean` [H,W] uint8.

  Returns (image [H,W] uint8, mask [H,W] bool) with mask == (image != clean), every
  masked pixel differing by >= MIN_VISIBLE_CHANGE, and mask.mean() in DEFECT_AREA_RANGE.
  `donors`: [h,w] uint8 photos of other textures (used by 'cut_paste').
  """
  painters = {"scratch": _paint_scratch, "stain": _paint_stain, "cut_paste": _paint_cut_paste}
  if defect not in painters:
    raise ValueError(f"unknown demo defect {defect!r}; expected one of {DEFECT_TYPES}")
  low, high = DEFECT_AREA_RANGE
  for _ in range(_MAX_DEFECT_ATTEMPTS):
    candidate, support = painters[defect](clean, rng, donors)
    image, mask = _enforce_visible_change(clean, candidate, support)
    if low <= mask.mean() <= high:
      return image, mask
  raise RuntimeError(f"could not draw a {defect!r} defect covering {DEFECT_AREA_RANGE} "
                     f"of the image in {_MAX_DEFECT_ATTEMPTS} attempts")


def _enforce_visible_change(clean, candidate, support) -> tuple[np.ndarray, np.ndarray]:
  """Apply `candidate` inside `support` so that every support pixel visibly changes.

  Where the candidate is closer than MIN_VISIBLE_CHANGE to the clean value (e.g. a pasted
  pixel that happens to match, or darkening an already black pixel) it is nudged to
  exactly MIN_VISIBLE_CHANGE away, towards the candidate if that stays in [0, 255].
  So the mask is the whole support, solid, and equals the set of changed pixels.
  Returns (image [H,W] uint8, mask [H,W] bool).
  """
  base = clean.astype(np.float64)
  target = np.clip(np.rint(candidate), 0, 255)
  direction = np.sign(target - base)
  direction[direction == 0] = np.where(base < 128, 1.0, -1.0)[direction == 0]
  nudged = base + direction * MIN_VISIBLE_CHANGE
  nudged = np.where((nudged < 0) | (nudged > 255), base - direction * MIN_VISIBLE_CHANGE,
                    nudged)
  target = np.where(np.abs(target - base) < MIN_VISIBLE_CHANGE, nudged, target)
  image = np.where(support, target, base).astype(np.uint8)
  return image, support.copy()


def _paint_scratch(clean, rng, donors):
  """One or two thin (1-3 px) curved strokes pulled towards white or black."""
  support = np.zeros(clean.shape, bool)
  for _ in range(int(rng.integers(1, 3))):
    stroke = _bezier_stroke(clean.shape, rng)
    width = int(rng.integers(1, 4))
    if width > 1:
      stroke = ndimage.binary_dilation(stroke, structure=np.ones((width, width), bool))
    support |= stroke
  target = 255.0 if rng.random() < 0.5 else 0.0
  strength = rng.uniform(0.55, 0.85)
  return clean + strength * (target - clean.astype(np.float64)), support


def _bezier_stroke(shape, rng) -> np.ndarray:
  """[H,W] bool 1-px cubic Bezier curve of random position, length and bend."""
  size = shape[0]
  start = rng.uniform(0.1, 0.9, size=2) * size
  angle = rng.uniform(0, 2 * np.pi)
  length = rng.uniform(0.25, 0.7) * size
  direction = np.array([np.cos(angle), np.sin(angle)])
  normal = np.array([-direction[1], direction[0]])
  bends = rng.uniform(-0.35, 0.35, size=2) * length
  controls = np.stack([start,
                       start + direction * length / 3 + normal * bends[0],
                       start + direction * 2 * length / 3 + normal * bends[1],
                       start + direction * length])
  t = np.linspace(0.0, 1.0, int(4 * length))[:, None]
  points = ((1 - t) ** 3 * controls[0] + 3 * (1 - t) ** 2 * t * controls[1]
            + 3 * (1 - t) * t ** 2 * controls[2] + t ** 3 * controls[3])
  points = np.rint(points).astype(np.int64)
  stroke = np.zeros(shape, bool)
  for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
    rows, cols = draw.line(r0, c0, r1, c1)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    stroke[rows[inside], cols[inside]] = True
  return stroke


def _paint_stain(clean, rng, donors):
  """A smooth irregular blob (ellipse with a noisy boundary), darkened or lightened."""
  size = clean.shape[0]
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  center = rng.uniform(0.15, 0.85, size=2) * size
  semi_axes = rng.uniform(0.04, 0.15, size=2) * size
  angle = rng.uniform(0, np.pi)
  u = (rows - center[0]) * np.cos(angle) + (cols - center[1]) * np.sin(angle)
  v = -(rows - center[0]) * np.sin(angle) + (cols - center[1]) * np.cos(angle)
  radius = np.sqrt((u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2)
  # Low-frequency noise makes the outline irregular yet smooth.
  noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=semi_axes.min() / 2)
  noise /= noise.std() + 1e-12
  support = _largest_component(radius + 0.3 * noise < 1.0)
  # Feather the strength over ~1-2 px inside the blob for a soft edge.
  weight = ndimage.gaussian_filter(support.astype(np.float64), sigma=1.0) * support
  values = clean.astype(np.float64)
  if rng.random() < 0.5:
    darkened = values * rng.uniform(0.4, 0.65)
    return values + weight * (darkened - values), support
  lightened = values + rng.uniform(0.35, 0.6) * (255.0 - values)
  return values + weight * (lightened - values), support


def _largest_component(binary: np.ndarray) -> np.ndarray:
  labels, count = ndimage.label(binary)
  if count == 0:
    return binary
  sizes = ndimage.sum_labels(binary, labels, index=np.arange(1, count + 1))
  return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _paint_cut_paste(clean, rng, donors):
  """A (possibly rotated) rectangle of another texture photo pasted in."""
  size = clean.shape[0]
  donor = donors[int(rng.integers(len(donors)))]
  source = _random_crop(donor, size, rng)
  height, width = rng.uniform(0.08, 0.3, size=2) * size
  angle = 0.0 if rng.random() < 0.5 else rng.uniform(0, np.pi)
  half_diagonal = 0.5 * np.hypot(height, width)
  center = rng.uniform(half_diagonal, size - half_diagonal, size=2)
  corners = np.array([[-height, -width], [-height, width], [height, width], [height, -width]]) / 2
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  corners = corners @ rotation.T + center
  rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=clean.shape)
  support = np.zeros(clean.shape, bool)
  support[rr, cc] = True
  return np.where(support, source, clean).astype(np.float64), support
