"""SepConv video frame interpolation in JAX/Flax NNX.

`Interpolator` runs a model on arrays (jit-compiled, any frame size). The network and its
configuration (`SepConvNet`, `SepConvConfig`), the padding policies that make any frame size work
(`sepconv_jax.network.padding`) and checkpoints with their metadata (`save_model`, `load_model`).
Conventions (layout, value range, channel order, compute precision) are in
`sepconv_jax.network.model`'s docstring. The subpackages: `network`, `inference`, `evaluation`,
`training` and `commands` (the `sepconv` command), in that order of imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The public names and the module each lives in. They are imported on first use (PEP 562), so
# that `import sepconv_jax` and the `sepconv` command's --help stay free of jax until needed.
_EXPORTS = {
    "CheckpointError": "sepconv_jax.network.checkpoint",
    "load_model": "sepconv_jax.network.checkpoint",
    "read_metadata": "sepconv_jax.network.checkpoint",
    "save_model": "sepconv_jax.network.checkpoint",
    "Interpolator": "sepconv_jax.inference.interpolator",
    "ConvOptions": "sepconv_jax.network.model",
    "KernelMaps": "sepconv_jax.network.model",
    "SepConvConfig": "sepconv_jax.network.model",
    "SepConvNet": "sepconv_jax.network.model",
    "count_parameters": "sepconv_jax.network.model",
    "local_separable_conv": "sepconv_jax.network.model",
    "POLICIES": "sepconv_jax.network.padding",
    "PaddingPlan": "sepconv_jax.network.padding",
    "crop": "sepconv_jax.network.padding",
    "pad": "sepconv_jax.network.padding",
    "plan_padding": "sepconv_jax.network.padding",
    "run_padded": "sepconv_jax.network.padding",
}

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
  from sepconv_jax.network.checkpoint import CheckpointError, load_model, read_metadata, save_model
  from sepconv_jax.inference.interpolator import Interpolator
  from sepconv_jax.network.model import (ConvOptions, KernelMaps, SepConvConfig, SepConvNet,
                                 count_parameters, local_separable_conv)
  from sepconv_jax.network.padding import POLICIES, PaddingPlan, crop, pad, plan_padding, run_padded


def __getattr__(name: str):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'sepconv_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CheckpointError",
    "ConvOptions",
    "Interpolator",
    "KernelMaps",
    "POLICIES",
    "PaddingPlan",
    "SepConvConfig",
    "SepConvNet",
    "count_parameters",
    "crop",
    "load_model",
    "local_separable_conv",
    "pad",
    "plan_padding",
    "read_metadata",
    "run_padded",
    "save_model",
]
