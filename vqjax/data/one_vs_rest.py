"""One-vs-rest anomaly detection on CIFAR-10, MNIST, Fashion-MNIST and digits (NumPy/PIL).

One class is normal (Gangloff et al. 2022, section III-D): train/val hold only its training
images, test is the whole official test set with label 0 for that class and 1 for the rest.
There is no pixel ground truth: masks are all False and has_mask all False in every split.

"digits" is a small stand-in set, not one of the paper's: scikit-learn's bundled
sklearn.datasets.load_digits (1797 8x8 grey images, values 0..16), read offline and without
data_dir. It has no official split, so ours is fixed and stated in `read_digits`.

Sources of the other sets, tried in this order inside `data_dir`:
  1. the standard files:
       CIFAR-10 (python version): <data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}
         (or data_dir = cifar-10-batches-py itself);
       MNIST / Fashion-MNIST idx files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in
         <data_dir>/<name>/, <data_dir>/{MNIST,FashionMNIST}/raw/ (torchvision) or <data_dir>;
  2. a prepared tensorflow-datasets folder <data_dir>/<name>/<version>/, if tensorflow_datasets
     is installed (our names are the tfds names);
  3. download=True: tfds downloads and prepares it into data_dir (needs network).
"""

from __future__ import annotations

import gzip
import math
import numbers
import pathlib
import pickle
import re
import typing
import zlib

import numpy as np
from PIL import Image

from vqjax.data.dataset import Dataset, Split, hold_out_validation
from vqjax.data.mvtec import check_image_size, check_val_fraction

ONE_VS_REST_DATASETS = ("cifar10", "mnist", "fashion_mnist", "digits")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"),
    "digits": tuple(str(digit) for digit in range(10)),
}

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split never depends on the run seed


class RawSplits(typing.NamedTuple):
  """Official splits, all classes. images [N,H,W,C] uint8; labels [N] int64 in 0..9."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def load_one_vs_rest(name: str, normal_class: int | str, data_dir, val_fraction: float = 0.1,
                     seed: int = 0, image_size: int | None = None,
                     download: bool = False) -> Dataset:
  """Dataset with category '<name>/<class name>', e.g. 'cifar10/airplane'.

  images are [N,S,S,C] uint8: CIFAR-10 C=3 S=32, (Fashion-)MNIST C=1 S=28, digits C=1 S=8,
  or S=image_size after a PIL bilinear resize. data_dir may be None for digits only.
  val is a seeded slice of the normal training images (hold_out_validation); names are
  '<official split>/<index in it>' ('test/00017').
  """
  class_index = normal_class_index(name, normal_class)
  if image_size is not None:
    check_image_size(image_size)
  check_val_fraction(val_fraction)
  raw = read_raw_splits(name, data_dir, download)

  train_index = np.flatnonzero(raw.train_labels == class_index)
  train_normal = _split(raw.train_images[train_index], np.zeros(len(train_index), np.int32),
                        [f"train/{i:05d}" for i in train_index], image_size)
  test_labels = (raw.test_labels != class_index).astype(np.int32)
  test = _split(raw.test_images, test_labels,
                [f"test/{i:05d}" for i in range(len(test_labels))], image_size)
  category = f"{name}/{CLASS_NAMES[name][class_index]}"
  return hold_out_validation(category, train_normal, test, val_fraction, seed)


def normal_class_index(name: str, normal_class: int | str) -> int:
  """Index 0..9 of a class given by index or by name (case-insensitive)."""
  _check_name(name)
  names = CLASS_NAMES[name]
  if isinstance(normal_class, str) and normal_class.strip().lower() in names:
    return names.index(normal_class.strip().lower())
  is_index = isinstance(normal_class, numbers.Integral) and not isinstance(normal_class, bool)
  if is_index and 0 <= normal_class < len(names):
    return int(normal_class)
  valid = ", ".join(f"{i} ({class_name!r})" for i, class_name in enumerate(names))
  raise ValueError(f"normal class {normal_class!r} is not a {name} class; valid: {valid}")


def _check_name(name: str) -> None:
  if name not in ONE_VS_REST_DATASETS:
    raise ValueError(f"one-vs-rest dataset must be one of {ONE_VS_REST_DATASETS}, got {name!r}")


def _split(images: np.ndarray, labels: np.ndarray, names: list[str],
           image_size: int | None) -> Split:
  n, height, width, _ = images.shape
  if image_size is not None and (height, width) != (image_size, image_size):
    images = _resize(images, image_size)
  return Split(images=images, masks=np.zeros(images.shape[:3], bool), labels=labels,
               names=tuple(names), has_mask=np.zeros(n, bool))


def _resize(images: np.ndarray, image_size: int) -> np.ndarray:
  """[N,H,W,C] uint8 -> [N,image_size,image_size,C] uint8, PIL bilinear per image."""
  n, _, _, channels = images.shape
  out = np.empty((n, image_size, image_size, channels), np.uint8)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = pil.resize((image_size, image_size), Image.Resampling.BILINEAR)
    out[i] = np.asarray(resized, np.uint8).reshape(image_size, image_size, channels)
  return out


# --- sources -----------------------------------------------------------------------------


def read_raw_splits(name: str, data_dir, download: bool = False) -> RawSplits:
  """Official train and test splits from the first source found (see module docstring).

  digits ignores data_dir and download (see `read_digits`)."""
  _check_name(name)
  if name == "digits":
    return read_digits()
  data_dir = pathlib.Path(data_dir)
  raw = _read_cifar10(data_dir) if name == "cifar10" else _read_idx_dataset(name, data_dir)
  if raw is not None:
    return raw
  tfds_prepared = _has_tfds_version_folder(data_dir / name)
  if tfds_prepared or download:
    tfds = _import_tfds()
    if tfds is not None:
      return _read_tfds(tfds, name, data_dir, download=download and not tfds_prepared)
    if download:
      raise ImportError(f"data.download=True needs tensorflow-datasets (pip install "
                        f"tensorflow-datasets); or {_standard_files_hint(name, data_dir)}")
  raise FileNotFoundError(_not_found_message(name, data_dir, tfds_prepared))


def _standard_files_hint(name: str, data_dir: pathlib.Path) -> str:
  if name == "cifar10":
    return (f"download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"and extract it into {data_dir}, so that {data_dir / CIFAR_FOLDER / 'data_batch_1'} "
            f"exists (data_batch_1..5 and test_batch)")
  return (f"put the four idx files {', '.join(IDX_FILES)} (each may end in .gz) of {name} "
          f"into {data_dir / name}, e.g. so that {data_dir / name / IDX_FILES[0]}.gz exists")


def _not_found_message(name: str, data_dir: pathlib.Path, tfds_prepared: bool) -> str:
  tfds_note = (f"found the tensorflow-datasets folder {data_dir / name} but tensorflow_datasets "
               f"is not installed; " if tfds_prepared else "")
  return (f"no {name} data found in {data_dir}: {tfds_note}{_standard_files_hint(name, data_dir)}"
          f", or pass a data_dir holding a prepared tensorflow-datasets folder "
          f"{data_dir / name}/<version>/, or set data.download=True when online")


def _missing_files_error(folder: pathlib.Path, missing: list[str], name: str):
  return FileNotFoundError(f"{name} folder {folder} holds some of the standard files but not "
                           f"{', '.join(missing)}; put all of them there")


# --- scikit-learn digits ------------------------------------------------------------------


def read_digits() -> RawSplits:
  """sklearn's load_digits with a fixed, stratified 2/3 : 1/3 train/test split.

  Pixels v in 0..16 become round(v * 255 / 16) (NumPy rounds half to even: 8 -> 128), as
  [N,8,8,1] uint8. Split: one numpy default_rng(DIGITS_SPLIT_SEED) permutes each class's
  indices in turn (classes 0..9); the first floor(2n/3) of a class's n images go to train,
  the rest to test. Both splits keep load_digits' order, so 1797 images in all.
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = digits_to_uint8(digits.images)[..., None]
  labels = np.asarray(digits.target, np.int64)
  train_index, test_index = digits_split(labels)
  return RawSplits(images[train_index], labels[train_index], images[test_index],
                   labels[test_index])


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
  """Grey levels 0..16 -> 0..255 uint8: round(v * 255 / 16)."""
  return np.round(np.asarray(values, np.float64) * 255 / 16).astype(np.uint8)


def digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) sorted indices: per class a seeded permutation, its first 2/3 to train."""
  rng = np.random.default_rng(DIGITS_SPLIT_SEED)
  train, test = [], []
  for label in range(10):
    index = rng.permutation(np.flatnonzero(labels == label))
    n_train = 2 * len(index) // 3
    train.append(index[:n_train])
    test.append(index[n_train:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --- CIFAR-10 python pickles -------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only containers and NumPy arrays: a pickle may otherwise run any code."""

  _ALLOWED = frozenset({
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
  })

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def _read_cifar10(data_dir: pathlib.Path) -> RawSplits | None:
  """CIFAR-10 python batches in data_dir/cifar-10-batches-py or data_dir; None if absent."""
  all_files = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE)
  for folder in (data_dir / CIFAR_FOLDER, data_dir):
    present = [f for f in all_files if (folder / f).is_file()]
    if not present:
      continue
    if len(present) < len(all_files):
      raise _missing_files_error(folder, [f for f in all_files if f not in present], "cifar10")
    train = [_read_cifar_batch(folder / f) for f in CIFAR_TRAIN_FILES]
    test_images, test_labels = _read_cifar_batch(folder / CIFAR_TEST_FILE)
    return RawSplits(np.concatenate([images for images, _ in train]),
                     np.concatenate([labels for _, labels in train]), test_images, test_labels)
  return None


def _read_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """([N,32,32,3] uint8 HWC, [N] int64) from one batch: b'data' [N,3072] rows are CHW."""
  try:
    with open(path, "rb") as f:
      batch = _ArrayUnpickler(f, encoding="bytes").load()  # the files are Python 2 pickles
    data = np.asarray(_field(batch, "data"))
    labels = np.asarray(_field(batch, "labels"))
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
          ImportError, IndexError, KeyError) as error:
    raise ValueError(f"cannot read CIFAR-10 batch {path}: {error}") from error
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise ValueError(f"CIFAR-10 batch {path}: b'data' must be [N,3072] uint8, got "
                     f"{data.shape} {data.dtype}")
  _check_labels(labels, len(data), path)
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int64)


def _field(batch, key: str):
  """batch[b'key'] as in the official files, or batch['key'] if re-pickled in Python 3."""
  if not isinstance(batch, dict):
    raise TypeError(f"expected a dict, got {type(batch).__name__}")
  return batch[key.encode()] if key.encode() in batch else batch[key]


def _check_labels(labels: np.ndarray, n: int, path) -> None:
  ok = (labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
        and (n == 0 or (labels.min() >= 0 and labels.max() <= 9)))
  if not ok:
    raise ValueError(f"{path}: labels must be [{n}] integers in 0..9, got shape {labels.shape} "
                     f"dtype {labels.dtype}")


# --- MNIST / Fashion-MNIST idx files -----------------------------------------------------


def _read_idx_dataset(name: str, data_dir: pathlib.Path) -> RawSplits | None:
  """The four idx files from the first folder that has any of them; None if none does."""
  folders = (data_dir / name, data_dir / _TORCHVISION_FOLDERS[name] / "raw", data_dir)
  for folder in folders:
    paths = {base: _idx_path(folder, base) for base in IDX_FILES}
    if not any(paths.values()):
      continue
    missing = [f"{base}[.gz]" for base, path in paths.items() if path is None]
    if missing:
      raise _missing_files_error(folder, missing, name)
    train_images, train_labels, test_images, test_labels = (
        read_idx(paths[base], ndim) for base, ndim in zip(IDX_FILES, (3, 1, 3, 1)))
    _check_labels(train_labels, len(train_images), paths[IDX_FILES[1]])
    _check_labels(test_labels, len(test_images), paths[IDX_FILES[3]])
    return RawSplits(train_images[..., None], train_labels.astype(np.int64),
                     test_images[..., None], test_labels.astype(np.int64))
  return None


def _idx_path(folder: pathlib.Path, base: str) -> pathlib.Path | None:
  for path in (folder / base, folder / f"{base}.gz"):
    if path.is_file():
      return path
  return None


def read_idx(path, ndim: int) -> np.ndarray:
  """An unsigned-byte idx file (optionally .gz) with `ndim` dimensions, as uint8 of its shape."""
  path = pathlib.Path(path)
  try:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, zlib.error) as error:
    raise ValueError(f"cannot read idx file {path}: {error}") from error
  # Header: 0x00 0x00, type 0x08 (unsigned byte), ndim; then ndim big-endian uint32 sizes.
  magic = bytes([0, 0, 0x08, ndim])
  if raw[:4] != magic:
    raise ValueError(f"idx file {path} does not start with the magic number {magic.hex(' ')} "
                     f"(unsigned bytes, {ndim} dimensions); got {raw[:4].hex(' ') or 'nothing'}")
  header_size = 4 + 4 * ndim
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(raw) < header_size or len(raw) - header_size != math.prod(shape):
    raise ValueError(f"idx file {path} holds {len(raw)} bytes but its header says shape "
                     f"{shape} ({header_size + math.prod(shape)} bytes): truncated or corrupt")
  return np.frombuffer(raw, np.uint8, offset=header_size).reshape(shape)


# --- tensorflow-datasets -------------------------------------------------------------------


def _has_tfds_version_folder(folder: pathlib.Path) -> bool:
  """True if folder holds a tfds version sub-folder such as 3.0.2/."""
  return folder.is_dir() and any(
      p.is_dir() and re.fullmatch(r"\d+\.\d+\.\d+", p.name) for p in folder.iterdir())


def _import_tfds():
  """The tensorflow_datasets module (TF kept off the GPUs), or None if not installed."""
  _hide_gpus_from_tensorflow()
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tfds


def _hide_gpus_from_tensorflow() -> None:
  """Keep TensorFlow (used by tfds) from taking GPU memory that JAX needs, as scenic does."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialised its devices; too late to change, and tfds still works


def _read_tfds(tfds, name: str, data_dir: pathlib.Path, download: bool) -> RawSplits:
  def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    data = tfds.as_numpy(tfds.load(name, split=split, data_dir=str(data_dir),
                                   download=download, batch_size=-1))
    images, labels = np.asarray(data["image"]), np.asarray(data["label"])
    where = f"tensorflow-datasets {name} split {split!r} in {data_dir}"
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"{where}: images must be [N,H,W,C] uint8, got {images.shape} "
                       f"{images.dtype}")
    _check_labels(labels, len(images), where)
    return images, labels.astype(np.int64)

  return RawSplits(*load("train"), *load("test"))
