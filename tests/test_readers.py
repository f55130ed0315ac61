"""Tests for vqjax.data.ucsd (UCSD Ped1) and vqjax.data.one_vs_rest (CIFAR-10, (F)MNIST, digits).

Each test writes a tiny dataset in the real on-disk format into tmp_path (digits: the copy
bundled with scikit-learn).
"""

import collections
import gzip
import pathlib
import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from vqjax.data import one_vs_rest, ucsd

# --- UCSD Ped1 ---------------------------------------------------------------------------

_FRAME_SHAPE = (12, 16)  # not square, not image_size: frames are resized
_TRAIN_CLIPS = {"Train001": ["001.tif", "002.tif", "003.tif"], "Train002": ["1.tif", "2.tif"],
                "Train003": ["001.tif", "002.tif"], "Train004": ["001.tif", "002.tif"]}
_TEST_CLIPS = {"Test001": ["001.tif", "002.tif", "003.tif", "004.tif"],
               "Test002": ["001.tif", "002.tif", "003.tif", "004.tif", "005.tif"],
               "Test003": ["1.tif", "2.tif", "10.tif"]}  # unpadded: 10 sorts last
_ANNOTATION = """% UCSD Ped1 frame-level ground truth
TestVideoFile = {};
TestVideoFile{end+1}.gt_frame = [2:3];
TestVideoFile{end+1}.gt_frame = [1, 4:5];
TestVideoFile{end+1}.gt_frame = [2 : 3];
"""


def _frame_value(clip: str, position: int) -> int:
  """A constant grey level that says which clip and frame a decoded image came from."""
  return 10 * int(clip[-3:]) + position + (100 if clip.startswith("Test") else 0)


def _write_clip(folder: pathlib.Path, frame_names: list[str]) -> None:
  folder.mkdir(parents=True)
  for position, frame_name in enumerate(frame_names):
    value = _frame_value(folder.name, position)
    Image.fromarray(np.full(_FRAME_SHAPE, value, np.uint8)).save(folder / frame_name)
  (folder / "._001.tif").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
  (folder / "notes.txt").write_text("not a frame")


def _write_masks(folder: pathlib.Path, anomalous: list[bool]) -> None:
  folder.mkdir(parents=True)
  for position, is_anomalous in enumerate(anomalous):
    mask = np.zeros(_FRAME_SHAPE, np.uint8)
    mask[:, 8:] = 100  # below the 8-bit midpoint: never anomalous
    if is_anomalous:
      mask[:, :8] = 255
    Image.fromarray(mask).save(folder / f"{position + 1:03d}.bmp")


@pytest.fixture
def ucsd_root(tmp_path):
  """tmp/UCSDped1 with 4 train clips, 3 test clips, Test001_gt and UCSDped1.m."""
  ped1 = tmp_path / "UCSDped1"
  for clip, frames in _TRAIN_CLIPS.items():
    _write_clip(ped1 / "Train" / clip, frames)
  for clip, frames in _TEST_CLIPS.items():
    _write_clip(ped1 / "Test" / clip, frames)
  _write_masks(ped1 / "Test" / "Test001_gt", [False, True, True, False])
  (ped1 / "Test" / ucsd.ANNOTATION_FILE).write_text(_ANNOTATION)
  for junk in (ped1 / ".DS_Store", ped1 / "Train" / ".DS_Store", ped1 / "Test" / "._Test001"):
    junk.write_bytes(b"junk")
  return tmp_path


def _clip_of(name: str) -> str:
  return name.split("/")[1]


def test_ucsd_test_split_labels_masks_and_order(ucsd_root):
  dataset = ucsd.load_ucsd_ped1(ucsd_root, image_size=8, val_fraction=0.25, seed=0)
  test = dataset.test
  assert dataset.category == "ped1" and dataset.num_channels == 1
  expected_names = [f"Test/{clip}/{frame}" for clip, frames in _TEST_CLIPS.items()
                    for frame in frames]
  assert list(test.names) == expected_names
  assert test.images.shape == (12, 8, 8, 1) and test.images.dtype == np.uint8
  expected_values = [_frame_value(clip, position) for clip, frames in _TEST_CLIPS.items()
                     for position in range(len(frames))]
  np.testing.assert_array_equal(test.images[:, 0, 0, 0], expected_values)  # frame order
  # UCSDped1.m: Test001 [2:3], Test002 [1, 4:5] (multi-range), Test003 [2:3] = 2.tif, 10.tif
  np.testing.assert_array_equal(test.labels, [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1])
  assert test.labels.dtype == np.int32
  np.testing.assert_array_equal(test.has_mask, [True] * 4 + [False] * 8)
  assert test.masks.shape == (12, 8, 8) and test.masks.dtype == bool
  assert test.masks[1, :, :4].all() and not test.masks[1, :, 4:].any()  # 100 is not > 127
  assert not test.masks[0].any() and not test.masks[4:].any()


def test_ucsd_validation_holds_out_whole_training_clips(ucsd_root):
  dataset = ucsd.load_ucsd_ped1(ucsd_root, image_size=8, val_fraction=0.25, seed=3)
  train_clips = {_clip_of(n) for n in dataset.train.names}
  val_clips = {_clip_of(n) for n in dataset.val.names}
  assert len(val_clips) == 1 and not train_clips & val_clips
  assert train_clips | val_clips == set(_TRAIN_CLIPS)
  all_frames = {f"Train/{clip}/{frame}" for clip, frames in _TRAIN_CLIPS.items()
                for frame in frames}
  assert set(dataset.train.names) | set(dataset.val.names) == all_frames
  assert len(dataset.train) + len(dataset.val) == len(all_frames)
  for split in (dataset.train, dataset.val):
    assert not split.labels.any() and not split.masks.any() and split.has_mask is None
  # numeric frame order inside Train002 (1.tif, 2.tif) and determinism from the seed
  again = ucsd.load_ucsd_ped1(ucsd_root, image_size=8, val_fraction=0.25, seed=3)
  assert again.val.names == dataset.val.names
  no_val = ucsd.load_ucsd_ped1(ucsd_root, image_size=8, val_fraction=0.0)
  assert len(no_val.val) == 0 and len(no_val.train) == len(all_frames)


def test_ucsd_root_may_be_the_ped1_folder(ucsd_root):
  from_parent = ucsd.load_ucsd_ped1(ucsd_root, image_size=8)
  from_ped1 = ucsd.load_ucsd_ped1(ucsd_root / "UCSDped1", image_size=8)
  assert from_ped1.test.names == from_parent.test.names
  np.testing.assert_array_equal(from_ped1.test.labels, from_parent.test.labels)


def test_ucsd_without_annotation_file_uses_masks_and_warns(ucsd_root):
  (ucsd_root / "UCSDped1" / "Test" / ucsd.ANNOTATION_FILE).unlink()
  with pytest.warns(UserWarning, match="Test002, Test003"):
    dataset = ucsd.load_ucsd_ped1(ucsd_root, image_size=8)
  assert [_clip_of(n) for n in dataset.test.names] == ["Test001"] * 4
  np.testing.assert_array_equal(dataset.test.labels, [0, 1, 1, 0])
  assert dataset.test.has_mask.all()


def test_ucsd_errors(ucsd_root, tmp_path):
  ped1 = ucsd_root / "UCSDped1"
  (ped1 / "Test" / "Test001_gt" / "004.bmp").unlink()
  with pytest.raises(ValueError, match=r"Test001_gt.*3 masks.*Test001 holds 4 frames"):
    ucsd.load_ucsd_ped1(ucsd_root, image_size=8)

  (ped1 / "Test" / ucsd.ANNOTATION_FILE).write_text("TestVideoFile{end+1}.gt_frame = [9:2];\n")
  with pytest.raises(ValueError, match=r"UCSDped1\.m:1.*'9:2'"):
    ucsd.load_ucsd_ped1(ucsd_root, image_size=8)

  empty = tmp_path / "empty"
  (empty / "UCSDped1" / "Train").mkdir(parents=True)
  layout = r"(?s)UCSDped1/Test does not exist.*TrainNNN/NNN\.tif"
  with pytest.raises(FileNotFoundError, match=layout):
    ucsd.load_ucsd_ped1(empty, image_size=8)
  with pytest.raises(FileNotFoundError, match=r"nowhere/Train does not exist"):
    ucsd.load_ucsd_ped1(tmp_path / "nowhere", image_size=8)


def test_read_gt_frames_parses_ranges(tmp_path):
  path = tmp_path / "UCSDped1.m"
  path.write_text(_ANNOTATION + "TestVideoFile{end+1}.gt_frame = [];  % none\n")
  assert ucsd.read_gt_frames(path) == [[(2, 3)], [(1, 1), (4, 5)], [(2, 3)], []]


# --- CIFAR-10 python pickles ---------------------------------------------------------------


def _write_cifar_batch(path: pathlib.Path, images_hwc: np.ndarray, labels: list[int]) -> None:
  """The official format: a protocol-2 dict with bytes keys, b'data' rows in CHW order."""
  data = images_hwc.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
  batch = {b"batch_label": b"batch", b"labels": list(labels), b"data": data,
           b"filenames": [b"x.png"] * len(labels)}
  raw = pickle.dumps(batch, protocol=2)
  # The official files were written with NumPy 1.x, whose arrays live in numpy.core.
  path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


@pytest.fixture
def cifar_dir(tmp_path):
  """5 train batches of 4 images (labels cycle 0..9) and a test batch of 10 (one per class)."""
  rng = np.random.default_rng(0)
  folder = tmp_path / one_vs_rest.CIFAR_FOLDER
  folder.mkdir()
  train_images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  for b in range(5):
    _write_cifar_batch(folder / f"data_batch_{b + 1}", train_images[4 * b:4 * b + 4],
                       [(4 * b + i) % 10 for i in range(4)])
  test_images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
  test_images[0] = (200, 100, 0)  # known colour: red 200, green 100, blue 0
  _write_cifar_batch(folder / "test_batch", test_images, list(range(10)))
  return tmp_path, train_images, test_images


def test_cifar10_one_vs_rest(cifar_dir):
  data_dir, train_images, test_images = cifar_dir
  dataset = one_vs_rest.load_one_vs_rest("cifar10", "cat", data_dir, val_fraction=0.5)
  assert dataset.category == "cifar10/cat" and dataset.num_channels == 3
  normal = [i for i in range(20) if i % 10 == 3]  # training images with label 3
  assert sorted(dataset.train.names + dataset.val.names) == [f"train/{i:05d}" for i in normal]
  assert len(dataset.val) == 1 and not set(dataset.train.names) & set(dataset.val.names)
  index = int(dataset.train.names[0].split("/")[1])
  np.testing.assert_array_equal(dataset.train.images[0], train_images[index])
  np.testing.assert_array_equal(dataset.test.images, test_images)  # CHW rows -> HWC
  assert tuple(dataset.test.images[0, 5, 7]) == (200, 100, 0)
  np.testing.assert_array_equal(dataset.test.labels, [1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
  for split in (dataset.train, dataset.val, dataset.test):
    assert not split.masks.any() and not split.has_mask.any()
    assert split.masks.shape == split.images.shape[:3]


def test_cifar10_class_by_index_resize_and_batches_folder(cifar_dir):
  data_dir, _, _ = cifar_dir
  by_name = one_vs_rest.load_one_vs_rest("cifar10", "Airplane", data_dir)
  by_index = one_vs_rest.load_one_vs_rest("cifar10", 0, data_dir / one_vs_rest.CIFAR_FOLDER,
                                          image_size=16)
  assert by_name.category == by_index.category == "cifar10/airplane"
  assert by_index.test.images.shape == (10, 16, 16, 3)
  assert by_index.train.names == by_name.train.names
  with pytest.raises(ValueError, match=r"valid: 0 \('airplane'\).*9 \('truck'\)"):
    one_vs_rest.load_one_vs_rest("cifar10", 10, data_dir)
  with pytest.raises(ValueError, match="'unicorn'"):
    one_vs_rest.load_one_vs_rest("cifar10", "unicorn", data_dir)
  with pytest.raises(ValueError, match="cifar10"):
    one_vs_rest.load_one_vs_rest("svhn", 0, data_dir)


def test_cifar10_bad_files(cifar_dir):
  data_dir, _, _ = cifar_dir
  batch = data_dir / one_vs_rest.CIFAR_FOLDER / "data_batch_2"
  batch.write_bytes(pickle.dumps({b"data": collections.Counter()}, protocol=2))
  with pytest.raises(ValueError, match=r"data_batch_2.*collections\.Counter"):
    one_vs_rest.load_one_vs_rest("cifar10", 0, data_dir)
  batch.unlink()
  with pytest.raises(FileNotFoundError, match="not data_batch_2"):
    one_vs_rest.load_one_vs_rest("cifar10", 0, data_dir)


# --- MNIST / Fashion-MNIST idx files -------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      size.to_bytes(4, "big") for size in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: pathlib.Path, rng, compress: bool) -> dict[str, np.ndarray]:
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": np.arange(30, dtype=np.uint8) % 10,
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": np.arange(10, dtype=np.uint8)[::-1]}
  folder.mkdir(parents=True, exist_ok=True)
  for file_name, array in arrays.items():
    raw = _idx_bytes(array)
    if compress:
      (folder / f"{file_name}.gz").write_bytes(gzip.compress(raw))
    else:
      (folder / file_name).write_bytes(raw)
  return arrays


def test_mnist_and_fashion_mnist_idx(tmp_path):
  rng = np.random.default_rng(1)
  mnist = _write_idx_set(tmp_path / "mnist", rng, compress=False)
  _write_idx_set(tmp_path / "fashion_mnist", rng, compress=True)

  dataset = one_vs_rest.load_one_vs_rest("mnist", "7", tmp_path, val_fraction=0.0)
  assert dataset.category == "mnist/7" and dataset.num_channels == 1
  assert dataset.train.images.shape == (3, 28, 28, 1)
  np.testing.assert_array_equal(dataset.train.images[..., 0],
                                mnist["train-images-idx3-ubyte"][[7, 17, 27]])
  np.testing.assert_array_equal(dataset.test.images[..., 0], mnist["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(dataset.test.labels, np.arange(10)[::-1] != 7)

  dataset = one_vs_rest.load_one_vs_rest("fashion_mnist", "T-shirt/top", tmp_path,
                                         image_size=8)
  assert dataset.category == "fashion_mnist/t-shirt/top"
  assert dataset.test.images.shape == (10, 8, 8, 1) and len(dataset.train) == 2
  assert dataset.test.labels.tolist() == [1] * 9 + [0]
  assert not dataset.test.has_mask.any()

  # idx files directly in data_dir
  direct = tmp_path / "direct"
  _write_idx_set(direct, rng, compress=False)
  assert len(one_vs_rest.load_one_vs_rest("mnist", 0, direct).test) == 10


def test_corrupt_idx_files_name_the_file(tmp_path):
  rng = np.random.default_rng(2)
  _write_idx_set(tmp_path / "mnist", rng, compress=False)
  images = tmp_path / "mnist" / "train-images-idx3-ubyte"
  images.write_bytes(images.read_bytes()[:-100])
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte .*truncated"):
    one_vs_rest.load_one_vs_rest("mnist", 0, tmp_path)
  images.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))  # float type, not unsigned byte
  with pytest.raises(ValueError, match="train-images-idx3-ubyte does not start"):
    one_vs_rest.load_one_vs_rest("mnist", 0, tmp_path)

  _write_idx_set(tmp_path / "fashion_mnist", rng, compress=True)
  labels = tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
  labels.write_bytes(labels.read_bytes()[:-8])
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz"):
    one_vs_rest.load_one_vs_rest("fashion_mnist", 0, tmp_path)


# --- tensorflow-datasets glue and the not-found message ------------------------------------


class _FakeTfds(types.ModuleType):
  """Stands in for tensorflow_datasets: load() returns numpy dicts and records its calls."""

  def __init__(self, events: list):
    super().__init__("tensorflow_datasets")
    self.events = events

  def load(self, name, split, data_dir, download, batch_size):
    self.events.append(("load", name, split, data_dir, download, batch_size))
    n = 6 if split == "train" else 4
    return {"image": np.full((n, 28, 28, 1), 9, np.uint8), "label": np.arange(n) % 3}

  def as_numpy(self, tree):
    return tree


@pytest.fixture
def fake_tfds(monkeypatch):
  events = []
  fake_tf = types.ModuleType("tensorflow")
  fake_tf.config = types.SimpleNamespace(
      set_visible_devices=lambda devices, kind: events.append(("hide", devices, kind)))
  monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", _FakeTfds(events))
  return events


def test_prepared_tfds_folder_is_loaded_without_download(tmp_path, fake_tfds):
  (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
  dataset = one_vs_rest.load_one_vs_rest("mnist", 2, tmp_path, val_fraction=0.0)
  assert fake_tfds == [("hide", [], "GPU"),
                       ("load", "mnist", "train", str(tmp_path), False, -1),
                       ("load", "mnist", "test", str(tmp_path), False, -1)]
  assert len(dataset.train) == 2 and dataset.test.labels.tolist() == [1, 1, 0, 1]


def test_download_goes_through_tfds(tmp_path, fake_tfds):
  one_vs_rest.load_one_vs_rest("cifar10", 1, tmp_path, download=True)
  assert [event[4] for event in fake_tfds if event[0] == "load"] == [True, True]


def test_standard_files_come_before_tfds(tmp_path, fake_tfds):
  _write_idx_set(tmp_path / "mnist", np.random.default_rng(3), compress=True)
  (tmp_path / "mnist" / "3.0.1").mkdir()
  one_vs_rest.load_one_vs_rest("mnist", 0, tmp_path, download=True)
  assert fake_tfds == []


def test_not_found_message_names_the_expected_paths(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails: not installed
  with pytest.raises(FileNotFoundError) as error:
    one_vs_rest.load_one_vs_rest("cifar10", 0, tmp_path)
  message = str(error.value)
  assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
  assert "cifar-10-python.tar.gz" in message and "download=True" in message
  assert str(tmp_path / "cifar10") in message  # the tfds folder

  (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="tensorflow_datasets is not installed") as error:
    one_vs_rest.load_one_vs_rest("mnist", 0, tmp_path)
  assert "train-images-idx3-ubyte" in str(error.value)
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    one_vs_rest.load_one_vs_rest("mnist", 0, tmp_path, download=True)


# --- scikit-learn digits (bundled, no data_dir) ----------------------------------------------


@pytest.fixture(scope="module")
def digits_raw():
  return one_vs_rest.read_raw_splits("digits", None)


def test_digits_raw_splits_shapes_sizes_and_determinism(digits_raw):
  raw = digits_raw
  for images, labels in ((raw.train_images, raw.train_labels),
                         (raw.test_images, raw.test_labels)):
    assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
  assert raw.train_images.max() == 255 and raw.train_images.min() == 0
  assert len(raw.train_labels) + len(raw.test_labels) == 1797
  train_counts = np.bincount(raw.train_labels, minlength=10)
  all_counts = train_counts + np.bincount(raw.test_labels, minlength=10)
  np.testing.assert_array_equal(train_counts, 2 * all_counts // 3)  # floor(2n/3) per class
  again = one_vs_rest.read_raw_splits("digits", "/ignored/for/digits")
  for a, b in zip(raw, again):
    np.testing.assert_array_equal(a, b)


def test_digits_value_mapping_matches_sklearn(digits_raw):
  from sklearn.datasets import load_digits
  digits = load_digits()
  train_index, _ = one_vs_rest.digits_split(digits.target)
  raw_image = digits.images[train_index[5]]  # float 0..16
  expected = np.round(raw_image * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(digits_raw.train_images[5, ..., 0], expected)
  np.testing.assert_array_equal(one_vs_rest.digits_to_uint8([0, 1, 8, 16]), [0, 16, 128, 255])


def test_digits_one_vs_rest_and_resize(digits_raw):
  dataset = one_vs_rest.load_one_vs_rest("digits", "3", None, val_fraction=0.1, seed=1,
                                         image_size=32)
  assert dataset.category == "digits/3" and dataset.num_channels == 1
  raw = digits_raw
  n_normal = int((raw.train_labels == 3).sum())
  assert len(dataset.train) + len(dataset.val) == n_normal and len(dataset.val) > 0
  for split in (dataset.train, dataset.val):
    indices = [int(name.split("/")[1]) for name in split.names]
    assert (raw.train_labels[indices] == 3).all()
  assert len(dataset.test) == len(raw.test_labels)
  np.testing.assert_array_equal(dataset.test.labels == 0, raw.test_labels == 3)
  for split in (dataset.train, dataset.val, dataset.test):
    assert split.images.shape[1:] == (32, 32, 1) and split.images.dtype == np.uint8
    assert not split.masks.any() and not split.has_mask.any()


def test_digits_through_load_dataset_without_root():
  import ml_collections
  from vqjax import data
  config = ml_collections.ConfigDict({"dataset": "digits", "root": None, "category": "0",
                                      "val_fraction": 0.0, "image_size": 8, "download": False})
  dataset, source = data.load_dataset(config, seed=0)
  assert dataset.category == "digits/0" and dataset.train.images.shape[1:] == (8, 8, 1)
  assert "load_digits" in source and data.categories(config) == [str(d) for d in range(10)]
  config.dataset = "mnist"
  with pytest.raises(FileNotFoundError, match="config.data.root is unset"):
    data.load_dataset(config, seed=0)
