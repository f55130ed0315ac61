"""Readers by name: `load_dataset(data_config, seed)` and the categories each one offers."""
from __future__ import annotations

import pathlib

from vqjax.data import demo, mvtec, one_vs_rest, ucsd
from vqjax.data.augment import TEXTURE_CATEGORIES
from vqjax.data.dataset import Dataset, Split

DATASETS = ("mvtec", "ucsd_ped1", *one_vs_rest.ONE_VS_REST_DATASETS)
DIGITS_SOURCE = ("scikit-learn's bundled digits set (sklearn.datasets.load_digits, fixed "
                 "2/3 : 1/3 split per class; data.root is not used)")


def _root(data_config) -> pathlib.Path:
  if data_config.root is None:
    where = {"ucsd_ped1": "the folder that holds UCSDped1/",
             }.get(data_config.dataset, "the folder with the dataset files (see README)")
    raise FileNotFoundError(f"config.data.root is unset: data.dataset={data_config.dataset!r} has "
                            f"no embedded copy; set --config.data.root to {where}")
  return pathlib.Path(data_config.root).expanduser()


def categories(data_config) -> list[str]:
  """Every category of the configured dataset (what data.category=all sweeps over)."""
  if data_config.dataset == "mvtec":
    root = demo.ensure_demo_dataset() if data_config.root is None else _root(data_config)
    found = mvtec.list_categories(root)
    if not found:
      raise FileNotFoundError(f"no category folder with train/good under {root}")
    return found
  if data_config.dataset == "ucsd_ped1":
    return ["ped1"]
  return list(one_vs_rest.CLASS_NAMES[data_config.dataset])


def read_size(data_config) -> int:
  """The side images of data.category are read at: data.texture_image_size for an MVTec
  texture category when it is set, else data.image_size."""
  texture_size = data_config.get("texture_image_size")
  if (texture_size and data_config.dataset == "mvtec"
      and data_config.category.split("/")[-1] in TEXTURE_CATEGORIES):
    return texture_size
  return data_config.image_size


def load_dataset(data_config, seed: int) -> tuple[Dataset, str]:
  """(Dataset, description of its source) for config.data; errors name the key and path."""
  name = data_config.dataset
  if name == "mvtec":
    if data_config.root is None:
      root = demo.ensure_demo_dataset()
      if data_config.category not in demo.DEMO_CATEGORIES:
        raise ValueError(f"config.data.category = {data_config.category!r} is not in the embedded "
                         f"demo data; choose one of {list(demo.DEMO_CATEGORIES)} or set data.root")
      source = ("the embedded demo data (synthetic defects on photographs shipped with "
                f"scikit-image and scikit-learn) at {root}")
    else:
      root = _root(data_config)
      source = str(root)
    return mvtec.load_mvtec(root, data_config.category, read_size(data_config),
                            val_fraction=data_config.val_fraction, seed=seed,
                            decode_cache_mb=data_config.decode_cache_mb), source
  if name == "digits":
    return one_vs_rest.load_one_vs_rest(
        name, data_config.category, None, val_fraction=data_config.val_fraction, seed=seed,
        image_size=data_config.image_size), DIGITS_SOURCE
  root = _root(data_config)
  if name == "ucsd_ped1":
    return ucsd.load_ucsd_ped1(root, data_config.image_size, val_fraction=data_config.val_fraction,
                               seed=seed), str(root)
  if name in one_vs_rest.ONE_VS_REST_DATASETS:
    dataset = one_vs_rest.load_one_vs_rest(
        name, data_config.category, root, val_fraction=data_config.val_fraction, seed=seed,
        image_size=data_config.image_size, download=data_config.download)
    return dataset, str(root)
  raise ValueError(f"config.data.dataset must be one of {list(DATASETS)}, got {name!r}")


__all__ = ["DATASETS", "Dataset", "Split", "categories", "load_dataset", "read_size"]
