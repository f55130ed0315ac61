"""Tests for vqjax.data.mvtec (MVTec-layout reader) and vqjax.data.demo (embedded dataset)."""

import hashlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from vqjax.data import demo
from vqjax.data.mvtec import Dataset, Split, list_categories, load_mvtec

# --- a tiny MVTec-layout folder --------------------------------------------------------


def _save(path: pathlib.Path, array: np.ndarray, mode: str | None = None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(array)
  if mode is not None:
    image = image.convert(mode)
  image.save(path)


def _rgb(rng, h=20, w=24):
  return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _grey(rng, h=16, w=16):
  return rng.integers(0, 256, size=(h, w), dtype=np.uint8)


def _left_half_mask(h, w, value=255):
  mask = np.zeros((h, w), np.uint8)
  mask[:, : w // 2] = value
  return mask


@pytest.fixture
def mvtec_root(tmp_path):
  """'widget' (RGB, 10 train) and 'tile' (greyscale, 4 train) categories."""
  rng = np.random.default_rng(0)
  root = tmp_path / "mvtec"
  widget = root / "widget"
  for i in range(10):
    _save(widget / "train/good" / f"{i:03d}.png", _rgb(rng))
  _save(widget / "train/good/010.PNG", _rgb(rng), mode="RGBA")  # upper-case ext, alpha
  (widget / "train/good/.hidden.png").write_bytes(b"not an image")
  (widget / "train/good/notes.txt").write_text("ignored")
  for i in range(2):
    _save(widget / "test/good" / f"{i:03d}.png", _rgb(rng))
  for i in range(2):
    _save(widget / "test/crack" / f"{i:03d}.png", _rgb(rng))
    # mask at half resolution: it is resized to the image size
    _save(widget / "ground_truth/crack" / f"{i:03d}_mask.png", _left_half_mask(10, 12))
  _save(widget / "test/bent/000.jpg", _rgb(rng))
  faint = _left_half_mask(20, 24, value=255)
  faint[:, 12:] = 100  # below the 8-bit midpoint: not an anomaly
  _save(widget / "ground_truth/bent/000_mask.png", faint)

  tile = root / "tile"
  for i in range(4):
    _save(tile / "train/good" / f"{i:03d}.png", _grey(rng))
  _save(tile / "test/good/000.png", _rgb(rng, 16, 16))  # RGB in a grey category
  sixteen = (rng.integers(0, 65536, size=(16, 16))).astype(np.uint16)
  _save(tile / "test/good/001.png", sixteen)
  _save(tile / "test/hole/000.png", _grey(rng))
  _save(tile / "ground_truth/hole/000_mask.png", _left_half_mask(16, 16, value=1))  # 0/1 mask
  (root / "not_a_category").mkdir()
  return root


def test_list_categories(mvtec_root):
  assert list_categories(mvtec_root) == ["tile", "widget"]


def test_load_rgb_category(mvtec_root):
  ds = load_mvtec(mvtec_root, "widget", image_size=16, val_fraction=0.2, seed=0)
  assert isinstance(ds, Dataset) and ds.category == "widget" and ds.num_channels == 3
  assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 2, 5)
  for split in (ds.train, ds.val, ds.test):
    assert split.images.shape == (len(split), 16, 16, 3) and split.images.dtype == np.uint8
    assert split.masks.shape == (len(split), 16, 16) and split.masks.dtype == bool
    assert split.labels.shape == (len(split),) and split.labels.dtype == np.int32
  assert ds.test.names == ("test/bent/000.jpg", "test/crack/000.png", "test/crack/001.png",
                           "test/good/000.png", "test/good/001.png")
  np.testing.assert_array_equal(ds.test.labels, [1, 1, 1, 0, 0])
  expected = np.zeros((16, 16), bool)
  expected[:, :8] = True
  for i in range(3):  # binarised (> 127) and resized
    np.testing.assert_array_equal(ds.test.masks[i], expected)
  assert not ds.test.masks[3:].any() and not ds.train.masks.any() and not ds.val.masks.any()
  assert not ds.train.labels.any() and not ds.val.labels.any()
  assert "train/good/010.PNG" in ds.train.names + ds.val.names
  assert not any(".hidden" in n or n.endswith(".txt") for n in ds.train.names + ds.val.names)


def test_one_colour_file_makes_a_grey_category_rgb(mvtec_root):
  # Colour is never dropped: one RGB test image makes 'tile' RGB, its grey files replicated.
  ds = load_mvtec(mvtec_root, "tile", image_size=8, val_fraction=0.0)
  assert ds.num_channels == 3
  assert ds.train.images.shape == (4, 8, 8, 3) and ds.test.images.shape == (3, 8, 8, 3)
  assert ds.val.images.shape == (0, 8, 8, 3) and ds.val.masks.shape == (0, 8, 8)
  grey = ds.train.images
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
  assert not (ds.test.images[0, ..., 0] == ds.test.images[0, ..., 1]).all()
  assert ds.test.names == ("test/good/000.png", "test/good/001.png", "test/hole/000.png")
  assert ds.test.masks[2][:, :4].all() and not ds.test.masks[2][:, 4:].any()  # 0/1 mask
  assert 60 < ds.test.images[1].mean() < 200  # 16-bit scaled to 8-bit, not clipped to 255


def test_val_split_disjoint_and_seeded(mvtec_root):
  train_names = {f"train/good/{i:03d}.png" for i in range(10)} | {"train/good/010.PNG"}
  by_seed = {}
  for seed in range(5):
    ds = load_mvtec(mvtec_root, "widget", image_size=8, val_fraction=0.2, seed=seed)
    assert not set(ds.train.names) & set(ds.val.names)
    assert set(ds.train.names) | set(ds.val.names) == train_names
    assert all(n.startswith("train/good/") for n in ds.val.names)
    assert not set(ds.val.names) & set(ds.test.names)
    by_seed[seed] = ds.val.names
  again = load_mvtec(mvtec_root, "widget", image_size=8, val_fraction=0.2, seed=3)
  assert again.val.names == by_seed[3]
  np.testing.assert_array_equal(again.val.images,
                                load_mvtec(mvtec_root, "widget", 8, 0.2, seed=3).val.images)
  assert len(set(by_seed.values())) > 1


@pytest.mark.parametrize("fraction, n_val", [(0.0, 0), (0.01, 1), (0.5, 6)])
def test_val_size(mvtec_root, fraction, n_val):
  ds = load_mvtec(mvtec_root, "widget", image_size=8, val_fraction=fraction)
  assert len(ds.val) == n_val and len(ds.train) == 11 - n_val


def test_split_rejects_inconsistent_shapes():
  with pytest.raises(ValueError, match="masks"):
    Split(np.zeros((2, 4, 4, 1), np.uint8), np.zeros((2, 4, 5), bool),
          np.zeros(2, np.int32), ("a", "b"))


# --- error cases -----------------------------------------------------------------------


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.*expected MVTec AD layout"):
    load_mvtec(tmp_path / "nowhere", "widget", 16)


def test_unknown_category_lists_found(mvtec_root):
  with pytest.raises(FileNotFoundError, match=r"\['tile', 'widget'\]"):
    load_mvtec(mvtec_root, "carpet", 16)


def test_missing_train_good_and_test(mvtec_root):
  (mvtec_root / "empty" / "train" / "good").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="holds no images"):
    load_mvtec(mvtec_root, "empty", 16)
  _save(mvtec_root / "empty" / "train" / "good" / "000.png", _grey(np.random.default_rng(0)))
  with pytest.raises(FileNotFoundError, match=r"empty[/\\]test"):
    load_mvtec(mvtec_root, "empty", 16)


def test_missing_mask_names_expected_path(mvtec_root):
  (mvtec_root / "widget/ground_truth/crack/001_mask.png").unlink()
  with pytest.raises(FileNotFoundError) as info:
    load_mvtec(mvtec_root, "widget", 16)
  message = str(info.value)
  assert "test/crack/001.png" in message and "ground_truth/crack/001_mask.png" in message


def test_undecodable_image_names_file(mvtec_root):
  (mvtec_root / "widget/test/good/001.png").write_bytes(b"\x89PNG garbage")
  with pytest.raises(ValueError, match=r"test[/\\]good[/\\]001\.png"):
    load_mvtec(mvtec_root, "widget", 16)


@pytest.mark.parametrize("fraction", [-0.1, 0.6, float("nan"), True, "0.1"])
def test_bad_val_fraction(mvtec_root, fraction):
  with pytest.raises(ValueError, match="data.val_fraction"):
    load_mvtec(mvtec_root, "widget", 16, val_fraction=fraction)


@pytest.mark.parametrize("size", [7, 0, 16.0, True, "32"])
def test_bad_image_size(mvtec_root, size):
  with pytest.raises(ValueError, match="data.image_size"):
    load_mvtec(mvtec_root, "widget", size)


# --- demo dataset ----------------------------------------------------------------------

_SMALL = dict(num_train=6, num_test_good=3, num_test_per_defect=4)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo") / "demo_mvtec"
  demo.generate_demo_dataset(root, **_SMALL)
  return root


def _file_digests(root: pathlib.Path) -> dict[str, str]:
  return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_layout_loads(demo_root):
  assert list_categories(demo_root) == list(demo.DEMO_CATEGORIES)
  for category in demo.DEMO_CATEGORIES:
    ds = load_mvtec(demo_root, category, image_size=64, val_fraction=0.2)
    assert ds.num_channels == 1
    assert len(ds.train) + len(ds.val) == 6 and len(ds.val) == 1
    assert len(ds.test) == 3 + 4 * len(demo.DEFECT_TYPES)
    assert ds.test.labels.sum() == 4 * len(demo.DEFECT_TYPES)
    assert all(ds.test.masks[i].any() for i in np.flatnonzero(ds.test.labels))
    image = Image.open(demo_root / category / "test" / "good" / "000.png")
    assert image.mode == "L" and image.size == (128, 128)


def test_demo_masks_nonempty_and_in_area_range(demo_root):
  low, high = demo.DEFECT_AREA_RANGE
  for category in demo.DEMO_CATEGORIES:
    assert not (demo_root / category / "ground_truth" / "good").exists()
    for defect in demo.DEFECT_TYPES:
      images = sorted((demo_root / category / "test" / defect).glob("*.png"))
      masks = sorted((demo_root / category / "ground_truth" / defect).glob("*.png"))
      assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
      for path in masks:
        values = np.asarray(Image.open(path))
        assert set(np.unique(values)) <= {0, 255}
        assert low <= (values > 0).mean() <= high, path


@pytest.mark.parametrize("defect", demo.DEFECT_TYPES)
def test_demo_defect_mask_is_exactly_the_changed_pixels(defect):
  photos = demo._load_photos()
  donors = [photos["grass"], photos["gravel"]]
  rng = np.random.default_rng(123)
  for _ in range(20):
    clean = demo._random_crop(photos["brick"][384:], 128, rng)
    image, mask = demo.make_defect(clean, defect, rng, donors)
    diff = np.abs(image.astype(int) - clean.astype(int))
    np.testing.assert_array_equal(mask, diff > 0)
    assert diff[mask].min() >= demo.MIN_VISIBLE_CHANGE


def test_demo_is_deterministic(demo_root, tmp_path):
  demo.generate_demo_dataset(tmp_path / "again", **_SMALL)
  assert _file_digests(tmp_path / "again") == _file_digests(demo_root)
  demo.generate_demo_dataset(tmp_path / "other", seed=1, **_SMALL)
  assert _file_digests(tmp_path / "other") != _file_digests(demo_root)
  # A category's files do not depend on which other categories are written.
  demo.generate_demo_dataset(tmp_path / "one", categories=("moon",), **_SMALL)
  assert _file_digests(tmp_path / "one" / "moon") == _file_digests(demo_root / "moon")
  with pytest.raises(ValueError, match="subset"):
    demo.generate_demo_dataset(tmp_path / "bad", categories=("carpet",), **_SMALL)


# Pixel digests of the version-1 demo categories at the default sizes (80 train, 20 good, 12 per
# defect), recorded from the version-1 generator: version 2 added categories without changing
# these three (so results measured on them before stay comparable).
_VERSION_1_DIGESTS = {
    "brick": "63160b87381803ce0153ad736dbd9b8814e67acdad33025f820ce2806a7bbbc8",
    "grass": "eeaf926e8dfabb5cec4e30b1ddc4d0678987a1089bf5a81c9ea5a761605a21ef",
    "gravel": "dd2742bc1bdc3a5f0fb851090f58f5257eace470f972dda888d8a61da362dcf8",
}


def test_version_1_categories_are_unchanged(tmp_path):
  categories = tuple(_VERSION_1_DIGESTS)
  demo.generate_demo_dataset(tmp_path / "demo", categories=categories)
  for category in categories:
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "demo" / category).rglob("*.png")):
      digest.update(path.relative_to(tmp_path / "demo" / category).as_posix().encode())
      digest.update(np.asarray(Image.open(path)).tobytes())
    assert digest.hexdigest() == _VERSION_1_DIGESTS[category], category


def test_demo_photos_are_grey_upright_and_hold_a_test_crop():
  photos = demo._load_photos()
  assert sorted(photos) == sorted(demo.DEMO_CATEGORIES) and len(photos) == 9
  for category, photo in photos.items():
    assert photo.dtype == np.uint8 and photo.ndim == 2 and photo.shape[0] >= photo.shape[1]
    assert photo.shape[0] - int(0.75 * photo.shape[0]) >= 128, category
    assert photo.std() > 10, category  # a real photo, not a blank
  # Colour photos are ITU-R 601 luma (what PIL's convert("L") computes, to +-1 grey level).
  from sklearn.datasets import load_sample_image
  pil_grey = np.rot90(np.asarray(Image.fromarray(load_sample_image("china.jpg")).convert("L")))
  assert np.abs(pil_grey.astype(int) - photos["china"].astype(int)).max() <= 1


def test_demo_train_and_test_crops_differ(demo_root):
  for category in demo.DEMO_CATEGORIES:
    train = {np.asarray(Image.open(p)).tobytes()
             for p in (demo_root / category / "train" / "good").glob("*.png")}
    for path in (demo_root / category / "test").rglob("*.png"):
      image = np.asarray(Image.open(path))
      orientations = [np.rot90(o, k) for o in (image, image[:, ::-1]) for k in range(4)]
      assert not any(np.ascontiguousarray(o).tobytes() in train for o in orientations)


def test_generate_refuses_existing_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
  (tmp_path / "exists").mkdir()
  with pytest.raises(FileExistsError):
    demo.generate_demo_dataset(tmp_path / "exists", **_SMALL)

  def fail(*args, **kwargs):
    raise RuntimeError("interrupted")

  monkeypatch.setattr(demo, "make_defect", fail)
  with pytest.raises(RuntimeError, match="interrupted"):
    demo.generate_demo_dataset(tmp_path / "broken", **_SMALL)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_ensure_demo_dataset_generates_once(tmp_path, monkeypatch):
  root = demo.ensure_demo_dataset(tmp_path / "cache")
  assert root == tmp_path / "cache" / f"demo_mvtec_v{demo.DEMO_VERSION}"
  assert list_categories(root) == list(demo.DEMO_CATEGORIES)
  assert len(list((root / "brick" / "train" / "good").glob("*.png"))) == 80
  stamp = (root / "brick" / "train" / "good" / "000.png").stat().st_mtime_ns

  def must_not_run(*args, **kwargs):
    raise AssertionError("regenerated an existing demo dataset")

  monkeypatch.setattr(demo, "generate_demo_dataset", must_not_run)
  assert demo.ensure_demo_dataset(tmp_path / "cache") == root
  assert (root / "brick" / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
  assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]


def test_ensure_uses_concurrently_created_folder(tmp_path, monkeypatch):
  def other_process_won(out_root, **kwargs):
    pathlib.Path(out_root).mkdir(parents=True)
    raise FileExistsError(out_root)

  monkeypatch.setattr(demo, "generate_demo_dataset", other_process_won)
  root = demo.ensure_demo_dataset(tmp_path)
  assert root.is_dir()


def test_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("VQJAX_CACHE_DIR", str(tmp_path / "a"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
  assert demo.default_cache_dir() == tmp_path / "a"
  monkeypatch.delenv("VQJAX_CACHE_DIR")
  assert demo.default_cache_dir() == tmp_path / "b" / "vqjax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert demo.default_cache_dir() == tmp_path / "home" / ".cache" / "vqjax"
