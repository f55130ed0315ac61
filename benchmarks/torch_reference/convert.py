"""Copies a vqjax Flax VQ-VAE's variables into `benchmarks.torch_reference.vqvae.VQVAE`.

Weight mapping (Flax path under 'params' / 'batch_stats' -> torch state_dict name):
  Conv kernel [kH,kW,I,O] (HWIO)          -> Conv2d weight [O,I,kH,kW]: transpose(3,2,0,1)
  ConvTranspose kernel [kH,kW,Cout,Cin]   -> ConvTranspose2d weight [Cin,Cout,kH,kW]:
                                             transpose(3,2,0,1), NO spatial flip (below)
  BatchNorm scale, bias / mean, var       -> weight, bias / running_mean, running_var
  codebook [K,D]                          -> codebook.weight [K,D]
  Dense kernel [I,O]                      -> Linear weight [O,I]: transposed
  LayerNorm scale, bias                   -> weight, bias (per channel)
IGD's variables keep BatchNorm statistics under 'model_state' and the GSVDD centre and
sigma^2 under 'gsvdd' (torch buffers); igd_parameter_mapping names those paths.
Why no flip: with transpose_kernel=True, Flax stores the kernel of the forward conv whose
gradient the layer computes (HWIO with I = the layer's output channels) and lax flips it
itself. torch's ConvTranspose2d weight [Cin,Cout,kH,kW] is that same forward conv's OIHW
weight (O = the layer's input channels), and torch applies the adjoint without a flip on
our side. Padding 2 = k - 1 - p in lax matches torch's p = 1 (tests/test_torch_parity.py).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Callable

import numpy as np
import torch
from torch import nn

from benchmarks.torch_reference.vqvae import VQVAE

# Training-only state of vqjax methods that the forward pass never reads.
IGNORED_COLLECTIONS = ("vq_stats",)
_COLLECTIONS = ("params", "batch_stats", "model_state", "gsvdd")

Transform = Callable[[np.ndarray], np.ndarray]


def conv_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Flax Conv kernel [kH,kW,I,O] -> torch Conv2d weight [O,I,kH,kW]."""
  return np.transpose(kernel, (3, 2, 0, 1))


def transposed_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Flax ConvTranspose(transpose_kernel=True) kernel [kH,kW,Cout,Cin] -> torch
  ConvTranspose2d weight [Cin,Cout,kH,kW]; no spatial flip (see the module docstring)."""
  return np.transpose(kernel, (3, 2, 0, 1))


def _same(value: np.ndarray) -> np.ndarray:
  return value


def _conv(flax_path: str, torch_name: str, kernel_fn: Transform = conv_kernel_to_torch):
  yield f"params/{flax_path}/kernel", f"{torch_name}.weight", kernel_fn
  yield f"params/{flax_path}/bias", f"{torch_name}.bias", _same


def dense_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Flax Dense kernel [I,O] -> torch Linear weight [O,I]."""
  return kernel.T


def _dense(flax_path: str, torch_name: str):
  yield from _conv(flax_path, torch_name, dense_kernel_to_torch)


def _batch_norm(flax_path: str, torch_name: str, stats_path: str | None = None):
  """stats_path: where the running statistics are (default batch_stats/<flax_path>)."""
  stats_path = stats_path or f"batch_stats/{flax_path}"
  yield f"params/{flax_path}/scale", f"{torch_name}.weight", _same
  yield f"params/{flax_path}/bias", f"{torch_name}.bias", _same
  yield f"{stats_path}/mean", f"{torch_name}.running_mean", _same
  yield f"{stats_path}/var", f"{torch_name}.running_var", _same


def _layer_norm(flax_path: str, torch_name: str):
  yield f"params/{flax_path}/scale", f"{torch_name}.weight", _same
  yield f"params/{flax_path}/bias", f"{torch_name}.bias", _same


def _residual(flax_path: str, torch_name: str):
  yield from _conv(f"{flax_path}/Conv_0", f"{torch_name}.conv3")
  yield from _conv(f"{flax_path}/Conv_1", f"{torch_name}.conv1")


def parameter_mapping(model: VQVAE) -> Iterator[tuple[str, str, Transform]]:
  """(Flax variable path, torch state_dict name, array transform) for every tensor.

  Flax auto-names compact submodules per type in call order (Conv_0, Conv_1, ...); the
  decoder's transposed convs are ConvTranspose_0..n-1, the last one without BatchNorm.
  """
  yield "params/codebook", "codebook.weight", _same
  encoder, decoder = model.encoder, model.decoder
  for i in range(len(encoder.down)):
    yield from _conv(f"encoder/Conv_{i}", f"encoder.down.{i}.conv")
    yield from _batch_norm(f"encoder/BatchNorm_{i}", f"encoder.down.{i}.bn")
  for i in range(len(encoder.residual)):
    yield from _residual(f"encoder/ResidualLayer_{i}", f"encoder.residual.{i}")
  if encoder.to_embedding is not None:
    yield from _conv("encoder/to_embedding", "encoder.to_embedding")
  if decoder.from_embedding is not None:
    yield from _conv("decoder/from_embedding", "decoder.from_embedding")
  for i in range(len(decoder.residual)):
    yield from _residual(f"decoder/ResidualLayer_{i}", f"decoder.residual.{i}")
  for i in range(len(decoder.up)):
    yield from _conv(f"decoder/ConvTranspose_{i}", f"decoder.up.{i}.conv",
                     transposed_kernel_to_torch)
    yield from _batch_norm(f"decoder/BatchNorm_{i}", f"decoder.up.{i}.bn")
  yield from _conv(f"decoder/ConvTranspose_{len(decoder.up)}", "decoder.last",
                   transposed_kernel_to_torch)


def favae_parameter_mapping(model) -> Iterator[tuple[str, str, Transform]]:
  """The same for `benchmarks.torch_reference.favae.FAVAE`: the Flax layers are named by the
  index of their torch module in the Sequentials (vqjax/models/favae.py)."""
  for part, conv_type, conv_name, transform in (
      ("encoder", nn.Conv2d, "conv", conv_kernel_to_torch),
      ("decoder", nn.ConvTranspose2d, "convt", transposed_kernel_to_torch)):
    for index, module in enumerate(getattr(model, part)):
      if isinstance(module, conv_type):
        yield from _conv(f"{part}_{conv_name}_{index}", f"{part}.{index}", transform)
      elif isinstance(module, nn.BatchNorm2d):
        yield from _batch_norm(f"{part}_bn_{index}", f"{part}.{index}")
  for i in range(len(model.adapters)):
    yield from _conv(f"adapter_{i}_0", f"adapters.{i}.0")
    yield from _conv(f"adapter_{i}_2", f"adapters.{i}.2")
  yield "params/log_var_pixels", "log_var_pixels", _same
  for i in range(len(model.log_var_features)):
    yield f"params/log_var_features_{i}", f"log_var_features.{i}", _same


def _igd_norm(module, flax_path: str, torch_name: str, stats_path: str):
  if isinstance(module, nn.BatchNorm2d):
    yield from _batch_norm(flax_path, torch_name, stats_path)
  else:
    yield from _layer_norm(flax_path, torch_name)


def _igd_network(network, flax_path: str, torch_name: str, stats_path: str):
  """An IGD encoder, decoder or critic: its blocks, and every other child by its own name
  (Conv2d, Linear, BatchNorm2d or ChannelLayerNorm; the Flax layer has the same name)."""
  for name, child in network.named_children():
    if name == "blocks":
      for i, block in enumerate(child):
        yield from _igd_block(block, f"{flax_path}/block_{i}", f"{torch_name}.blocks.{i}",
                              f"{stats_path}/block_{i}")
    elif isinstance(child, nn.Conv2d):
      yield from _conv(f"{flax_path}/{name}", f"{torch_name}.{name}")
    elif isinstance(child, nn.Linear):
      yield from _dense(f"{flax_path}/{name}", f"{torch_name}.{name}")
    else:
      yield from _igd_norm(child, f"{flax_path}/{name}", f"{torch_name}.{name}",
                           f"{stats_path}/{name}")


def _igd_block(block, flax_path: str, torch_name: str, stats_path: str):
  for name in ("norm_0", "norm_1"):
    yield from _igd_norm(getattr(block, name), f"{flax_path}/{name}", f"{torch_name}.{name}",
                         f"{stats_path}/{name}")
  for name in ("conv_0", "conv_1") + (("shortcut",) if block.shortcut is not None else ()):
    yield from _conv(f"{flax_path}/{name}", f"{torch_name}.{name}")


def igd_parameter_mapping(model) -> Iterator[tuple[str, str, Transform]]:
  """The same for `benchmarks.torch_reference.igd.IGD` and an IGDMethod's variables
  {'params': {scale: {'autoencoder', 'critic'}}, 'model_state': {scale: {'batch_stats'}},
  'gsvdd': {scale: {'center', 'sigma2'}}}: torch modules carry the Flax layer names
  (<scale>/autoencoder/encoder/block_<i>/conv_0 ->
  scales.<scale>.autoencoder.encoder.blocks.<i>.conv_0)."""
  for scale, part in model.scales.items():
    torch_name, stats = f"scales.{scale}", f"model_state/{scale}/batch_stats"
    ae, ae_name = f"{scale}/autoencoder", f"{torch_name}.autoencoder"
    for network in ("encoder", "decoder"):
      yield from _igd_network(getattr(part.autoencoder, network), f"{ae}/{network}",
                              f"{ae_name}.{network}", f"{stats}/{network}")
    yield from _dense(f"{ae}/to_latent", f"{ae_name}.to_latent")
    yield from _igd_network(part.critic, f"{scale}/critic", f"{torch_name}.critic",
                            f"{stats}/critic")  # LayerNorms only: no statistics
    yield f"gsvdd/{scale}/center", f"{torch_name}.center", _same
    yield f"gsvdd/{scale}/sigma2", f"{torch_name}.sigma2", _same


def vgg16_parameter_mapping(features) -> Iterator[tuple[str, str, Transform]]:
  """vqjax's VGG16 (Conv_0 .. Conv_12) -> torchvision's `features` Sequential indices."""
  convs = [i for i, module in enumerate(features) if isinstance(module, nn.Conv2d)]
  for k, index in enumerate(convs):
    yield from _conv(f"Conv_{k}", str(index))


def flatten_variables(variables: Mapping) -> dict[str, np.ndarray]:
  """{'params': {...}, 'batch_stats': {...}} -> {'params/encoder/Conv_0/kernel': array, ...}
  (IGD's 'model_state' and 'gsvdd' alike).

  Collections in IGNORED_COLLECTIONS are dropped; any other unknown collection is an error.
  """
  unknown = sorted(set(variables) - set(_COLLECTIONS) - set(IGNORED_COLLECTIONS))
  if unknown:
    raise ValueError(f"unknown Flax variable collections: {unknown}")
  flat = {}

  def visit(prefix, node):
    if isinstance(node, Mapping):
      for key, child in node.items():
        visit(f"{prefix}/{key}", child)
    else:
      flat[prefix] = np.asarray(node)

  for collection in _COLLECTIONS:
    if collection in variables:
      visit(collection, variables[collection])
  return flat


def load_flax_variables(torch_model, variables: Mapping, mapping: Callable = parameter_mapping):
  """Copies Flax `variables` into `torch_model` in place (and returns it), tensor by tensor
  as `mapping(torch_model)` lists them (parameter_mapping: the VQ-VAE).

  Raises ValueError naming every Flax tensor left unused, every mapped tensor missing from
  `variables`, every torch tensor left unset (BatchNorm's num_batches_tracked excepted),
  and every shape mismatch; nothing is copied unless all of them match.
  """
  flat = flatten_variables(variables)
  state = torch_model.state_dict()
  wanted = {name for name in state if not name.endswith("num_batches_tracked")}
  mapping = list(mapping(torch_model))
  used = {flax_path for flax_path, _, _ in mapping}
  targets = {torch_name for _, torch_name, _ in mapping}
  problems = []
  if missing := sorted(used - set(flat)):
    problems.append(f"Flax variables missing: {missing}")
  if leftover := sorted(set(flat) - used):
    problems.append(f"Flax variables with no torch counterpart: {leftover}")
  if unset := sorted(wanted - targets):
    problems.append(f"torch tensors not set: {unset}")
  if unknown := sorted(targets - wanted):
    problems.append(f"mapped torch names not in the model: {unknown}")
  converted = {}
  for flax_path, torch_name, transform in mapping:
    if flax_path not in flat or torch_name not in state:
      continue
    # np.array, not ascontiguousarray: that makes scalars (IGD's sigma^2) 1-d.
    value = np.array(transform(flat[flax_path]), dtype=np.float32, order="C")
    if value.shape != tuple(state[torch_name].shape):
      problems.append(f"shape mismatch {flax_path} {flat[flax_path].shape} -> {torch_name} "
                      f"expects {tuple(state[torch_name].shape)}, got {value.shape}")
    converted[torch_name] = torch.from_numpy(value)
  if problems:
    raise ValueError("Flax -> torch conversion failed:\n  " + "\n  ".join(problems))
  with torch.no_grad():
    for torch_name, value in converted.items():
      state[torch_name].copy_(value.to(state[torch_name].dtype))
  return torch_model
