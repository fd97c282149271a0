"""VGG-19 features up to relu4_4 in Flax NNX, for the perceptual (feature) loss.

Conventions
  Input    NHWC RGB in [0, 1]. `VGG19Features` applies the ImageNet normalisation that the
           torchvision weights were trained with: (x - mean) / std per channel, mean
           (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
  Output   relu4_4 activations, (B, H/8, W/8, 512).

Weights are never downloaded: the user provides the ImageNet weights as a local file in one of the
formats `load_vgg19_features` accepts:
  .pth / .pt  torchvision's VGG-19 state dict (`vgg19-dcbb9e9d.pth`, the file that
              `torchvision.models.vgg19(weights="IMAGENET1K_V1")` uses); needs torch installed.
  .npz        the same tensors saved with NumPy: keys `features.N.weight` (OIHW) and
              `features.N.bias` for N in `TORCHVISION_CONV_INDICES` (convert once with
              `np.savez(out, **{k: v.numpy() for k, v in state_dict.items()})`).
Only the 12 convolutions up to relu4_4 are read; classifier weights in the file are ignored.
"""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Output channels of the 12 convolutions up to relu4_4; "pool" marks 2x2 max pooling.
_LAYERS = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, 256, "pool", 512, 512, 512, 512)
# Index of each of those convolutions in torchvision's `vgg19().features` Sequential.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(ValueError):
  """The VGG weights file is missing, unreadable or of the wrong structure."""


class VGG19Features(nnx.Module):
  """VGG-19 convolutions up to relu4_4 (see the module docstring for conventions)."""

  def __init__(self, *, rngs: nnx.Rngs):
    convs, in_features = [], 3
    for layer in _LAYERS:
      if layer != "pool":
        convs.append(nnx.Conv(in_features, layer, kernel_size=(3, 3), padding="SAME", rngs=rngs))
        in_features = layer
    self.convs = nnx.List(convs)

  def __call__(self, rgb: jax.Array) -> jax.Array:
    x = (rgb - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    convs = iter(self.convs)
    for layer in _LAYERS:
      if layer == "pool":
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
      else:
        x = jax.nn.relu(next(convs)(x))
    return x


def _read_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  if path.suffix == ".npz":
    with np.load(path) as archive:
      return {key: archive[key] for key in archive.files}
  if path.suffix in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise VGGWeightsError(f"reading {path} needs torch (pip install 'sepconv-jax[torch]'), "
                            "or convert it to .npz once (see sepconv_jax.training.vgg)") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state.items()}
  raise VGGWeightsError(f"{path}: unknown VGG weights format {path.suffix!r} "
                        "(expected torchvision .pth/.pt or .npz)")


def load_vgg19_features(path: str | os.PathLike) -> VGG19Features:
  """VGG-19 features with the ImageNet weights in the local file `path` (formats above)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise VGGWeightsError(f"VGG-19 weights file not found: {path}")
  try:
    state = _read_state_dict(path)
  except VGGWeightsError:
    raise
  except Exception as error:  # corrupt archives raise many types
    raise VGGWeightsError(f"cannot read VGG-19 weights from {path}: {error}") from error
  # torchvision checkpoints saved from a wrapped model may carry a "module." prefix.
  state = {key.removeprefix("module."): value for key, value in state.items()}
  model = nnx.eval_shape(lambda: VGG19Features(rngs=nnx.Rngs(0)))
  for conv, index in zip(model.convs, TORCHVISION_CONV_INDICES):
    weight_key, bias_key = f"features.{index}.weight", f"features.{index}.bias"
    if weight_key not in state or bias_key not in state:
      raise VGGWeightsError(f"{path} is not a torchvision VGG-19 state dict: missing {weight_key}")
    weight = np.asarray(state[weight_key], np.float32).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    bias = np.asarray(state[bias_key], np.float32)
    if weight.shape != conv.kernel.shape or bias.shape != conv.bias.shape:
      raise VGGWeightsError(f"{path}: {weight_key} has shape {state[weight_key].shape}, expected "
                            f"OIHW for HWIO {conv.kernel.shape} (is this VGG-19?)")
    conv.kernel = nnx.Param(jnp.asarray(weight))
    conv.bias = nnx.Param(jnp.asarray(bias))
  return model
