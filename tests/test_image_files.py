"""Training images decoded on demand (vqjax.data.files.ImageFiles): the same pixels as decoding
up front, only the rows asked for decoded, a cache that keeps to its budget, and training on
them that equals training on the decoded array."""
import json

import numpy as np
import pytest
from PIL import Image

from test_train import _smoke_config, _tiny_images
from vqjax import sharding, train as train_lib
from vqjax.data import mvtec
from vqjax.data.files import ImageFiles
from vqjax.errors import UserInputError
from vqjax.methods import get_method


@pytest.fixture
def folder(tmp_path):
  """12 RGB training files of another size (48 px, read at 32: the resize path) and a test
  folder, in MVTec layout."""
  category = tmp_path / "widget"
  for i, image in enumerate(_tiny_images(n=12, size=48)):
    path = category / "train" / "good" / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
  for i, image in enumerate(_tiny_images(n=2, size=48, seed=1)):
    path = category / "test" / "good" / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
  return tmp_path


def test_decoded_on_demand_equals_decoded_up_front(folder):
  eager = mvtec.load_mvtec(folder, "widget", 32, val_fraction=0.25, seed=3)
  lazy = mvtec.load_mvtec(folder, "widget", 32, val_fraction=0.25, seed=3, decode_cache_mb=64)
  assert isinstance(lazy.train.images, ImageFiles)
  assert isinstance(lazy.val.images, np.ndarray)  # evaluated whole by every process
  assert lazy.train.images.shape == eager.train.images.shape
  assert lazy.train.names == eager.train.names and lazy.val.names == eager.val.names
  np.testing.assert_array_equal(np.asarray(lazy.train.images), eager.train.images)
  np.testing.assert_array_equal(lazy.val.images, eager.val.images)
  np.testing.assert_array_equal(lazy.train.masks, eager.train.masks)
  assert lazy.train.masks.strides[0] == 0  # all-False masks cost no N x H x W bytes
  rows = np.array([5, 0, 5, 8])
  np.testing.assert_array_equal(lazy.train.images[rows], eager.train.images[rows])
  np.testing.assert_array_equal(lazy.train.images[2], eager.train.images[2])
  np.testing.assert_array_equal(lazy.train.images[3:6], eager.train.images[3:6])


def test_only_the_rows_asked_for_are_decoded_and_the_cache_keeps_its_budget(folder):
  paths = sorted((folder / "widget" / "train" / "good").iterdir())
  one_image = 32 * 32 * 3
  files = ImageFiles(paths, 32, 3, cache_bytes=3 * one_image)
  files[np.array([4, 7, 4])]
  assert files.decoded_files == {4, 7} and files.decoded == 2 and files.cached == 2
  files[np.array([1, 2, 4])]  # 4 is cached; 1 fills the budget; 2 is decoded, not kept
  assert files.decoded == 4 and files.cached == 3
  files[np.array([2])]
  assert files.decoded == 5  # beyond the budget: decoded again
  uncached = ImageFiles(paths, 32, 3, cache_bytes=0)
  uncached[np.array([0])]
  uncached[np.array([0])]
  assert uncached.decoded == 2 and uncached.cached == 0


def test_a_bad_file_is_named_when_it_is_fed(folder):
  paths = sorted((folder / "widget" / "train" / "good").iterdir())
  paths[3].write_bytes(b"not a png")
  files = ImageFiles(paths, 32, 3, cache_bytes=0)
  files[np.array([0, 1])]
  with pytest.raises(UserInputError, match=r"cannot decode image file .*003\.png.*\(a training "
                     r"image, decoded when first fed\); fix or remove the file"):
    files[np.array([2, 3])]


def test_training_on_files_equals_training_on_the_decoded_array(folder, tmp_path):
  config = _smoke_config(num_steps=4, log_every=1, checkpoint_every=4)
  lazy = mvtec.load_mvtec(folder, "widget", 32, val_fraction=0.0, decode_cache_mb=0)
  eager = np.asarray(lazy.train.images)
  method = get_method(config, 3)
  decoded_before = lazy.train.images.decoded
  losses = {}
  for name, data in (("files", lazy.train.images), ("array", eager)):
    train_lib.train(config, method, data, tmp_path / name, show_progress=False)
    losses[name] = [json.loads(line)["loss"]
                    for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
  assert losses["files"] == losses["array"]  # same batches, bitwise
  # No cache: each batch decodes its distinct rows when fed, and nothing else.
  fed = sum(len(np.unique(train_lib.batch_indices(step, 8, 12, config.seed))) for step in range(4))
  assert lazy.train.images.decoded - decoded_before == fed


def test_a_process_reads_its_contiguous_share_of_each_batch(monkeypatch):
  shares = []
  for index in range(4):
    monkeypatch.setattr(sharding.jax, "process_count", lambda: 4)
    monkeypatch.setattr(sharding.jax, "process_index", lambda index=index: index)
    shares.append(np.arange(16)[sharding.process_rows(16)])
  np.testing.assert_array_equal(np.concatenate(shares), np.arange(16))
  assert all(len(s) == 4 for s in shares)
