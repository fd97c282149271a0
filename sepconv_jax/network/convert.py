"""Converts the published PyTorch SepConv weights into a sepconv-jax checkpoint.

  sepconv convert network-l1.pytorch checkpoints/sepconv-l1 [--overwrite]

The published files (`network-l1.pytorch`, `network-lf.pytorch`) are PyTorch state dicts of 94
tensors named `moduleConv{1..5}.{0,2,4}`, `moduleDeconv{5,4,3,2}.{0,2,4}`,
`moduleUpsample{5,4,3,2}.1` and `module{Vertical,Horizontal}{1,2}.{0,2,4,7}`, each with `.weight`
(OIHW) and `.bias`; newer loaders spell the prefix `net` instead of `module`, and both are accepted.
The weights expect BGR frames, which the checkpoint records.

torch is needed only here, imported lazily: `pip install 'sepconv-jax[torch]'`. `convert_state_dict`
takes plain NumPy arrays and needs no torch.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sepconv_jax.network.checkpoint import abstract_model, save_model
from sepconv_jax.network.model import SepConvConfig, SepConvNet

# The published weights were trained on BGR frames (they come from an OpenCV pipeline).
PUBLISHED_CHANNEL_ORDER = "BGR"

# Published module name (without the "module"/"net" prefix) -> this project's module path.
# Indices inside a published nn.Sequential count the ReLU and Upsample layers too, hence 0, 2, 4, 7.
_STACK_LAYERS = {0: ("convs", 0), 2: ("convs", 1), 4: ("convs", 2)}
_SUBNET_LAYERS = {**_STACK_LAYERS, 7: ("output_conv",)}


def _published_layout() -> dict[str, tuple]:
  layout = {}
  for level in range(1, 6):
    for index, path in _STACK_LAYERS.items():
      layout[f"Conv{level}.{index}"] = ("encoder", level - 1, *path)
  for position, level in enumerate((5, 4, 3, 2)):  # decoder[0] is the deepest
    for index, path in _STACK_LAYERS.items():
      layout[f"Deconv{level}.{index}"] = ("decoder", position, *path)
    layout[f"Upsample{level}.1"] = ("upsamplers", position, "conv")
  for direction in ("Vertical", "Horizontal"):
    for frame in (1, 2):  # the published frames are "one" and "two"; ours are 0 and 1
      for index, path in _SUBNET_LAYERS.items():
        layout[f"{direction}{frame}.{index}"] = (f"{direction.lower()}_subnets", frame - 1, *path)
  return layout


PUBLISHED_LAYOUT = _published_layout()  # 47 convolutions -> 94 tensors
PUBLISHED_PREFIXES = ("module", "net")


class ConversionError(Exception):
  """The input is not a usable SepConv state dict."""


def _strip_prefix(key: str) -> str:
  for prefix in PUBLISHED_PREFIXES:
    if key.startswith(prefix) and not key[len(prefix):len(prefix) + 1].islower():
      return key[len(prefix):]
  return key


def _resolve(model: nnx.Module, path: tuple) -> nnx.Conv:
  module = model
  for step in path:
    module = module[step] if isinstance(step, int) else getattr(module, step)
  return module


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       config: SepConvConfig = SepConvConfig()) -> SepConvNet:
  """Builds a `SepConvNet` from a published-layout state dict of NumPy arrays.

  Raises ConversionError naming missing, unexpected or wrongly shaped tensors.
  """
  tensors = {_strip_prefix(key): np.asarray(value) for key, value in state_dict.items()}
  expected = {f"{name}.{kind}" for name in PUBLISHED_LAYOUT for kind in ("weight", "bias")}
  missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
  if missing or unexpected:
    raise ConversionError(
        f"not a SepConv state dict: {len(missing)} missing keys {missing[:3]}, "
        f"{len(unexpected)} unexpected keys {unexpected[:3]} (expected the 94 published tensors, "
        "e.g. 'moduleConv1.0.weight')")

  # Parameters start as shapes only; every one of them is replaced below.
  model = abstract_model(config)
  for name, path in PUBLISHED_LAYOUT.items():
    conv = _resolve(model, path)
    # PyTorch stores conv weights as OIHW, Flax as HWIO.
    weight = tensors[f"{name}.weight"]
    kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight
    bias = tensors[f"{name}.bias"]
    for label, value, variable in (("weight", kernel, conv.kernel), ("bias", bias, conv.bias)):
      if value.shape != tuple(variable.shape):
        shown = weight.shape if label == "weight" else bias.shape
        raise ConversionError(f"{name}.{label} has shape {tuple(shown)}, which does not fit the "
                              f"network (expected {tuple(variable.shape)} after OIHW -> HWIO)")
      variable.set_value(jnp.asarray(value, dtype=jnp.float32))
  return model


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict into NumPy arrays (needs torch)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f"input file not found: {path}")
  try:
    import torch  # Optional dependency: only the converter needs it.
  except ImportError as error:
    raise ConversionError("torch is not installed; it is needed to read .pytorch files "
                          "(pip install 'sepconv-jax[torch]')") from error
  try:
    # weights_only: never run code from a downloaded pickle.
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises many types for damaged or foreign files
    first_line = (str(error).splitlines() or [""])[0]
    raise ConversionError(f"cannot read {path} as a PyTorch state dict: "
                          f"{type(error).__name__}: {first_line}") from error
  if not (isinstance(loaded, Mapping)
          and all(isinstance(value, torch.Tensor) for value in loaded.values())):
    raise ConversionError(f"{path} does not hold a state dict (a mapping of names to tensors)")
  return {key: value.detach().to(torch.float32).numpy() for key, value in loaded.items()}


def convert_file(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                 overwrite: bool = False) -> pathlib.Path:
  """Converts a published `.pytorch` file into a checkpoint at `output_path`."""
  output_path = pathlib.Path(output_path)
  if output_path.exists() and not overwrite:
    raise ConversionError(f"output {output_path} already exists (use --overwrite to replace it)")
  model = convert_state_dict(load_torch_state_dict(input_path))
  return save_model(output_path, model, channel_order=PUBLISHED_CHANNEL_ORDER, overwrite=overwrite,
                    info={"source": pathlib.Path(input_path).name,
                          "converted_by": "sepconv_jax.network.convert"})
