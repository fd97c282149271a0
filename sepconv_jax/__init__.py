"""SepConv video frame interpolation in JAX/Flax NNX.

`Interpolator` runs a model on arrays (jit-compiled, any frame size). The network and its
configuration (`SepConvNet`, `SepConvConfig`), the padding policies that make any frame size work
(`sepconv_jax.padding`) and checkpoints with their metadata (`save_model`, `load_model`).
Conventions (layout, value range, channel order, compute precision) are in `sepconv_jax.model`'s
docstring.
"""

from sepconv_jax.checkpoint import CheckpointError, load_model, read_metadata, save_model
from sepconv_jax.interpolator import Interpolator
from sepconv_jax.model import (ConvOptions, KernelMaps, SepConvConfig, SepConvNet,
                               count_parameters, local_separable_conv)
from sepconv_jax.padding import POLICIES, PaddingPlan, crop, pad, plan_padding, run_padded

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
