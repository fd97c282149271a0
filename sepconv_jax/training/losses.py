"""Training losses, each `loss(batch, prediction) -> scalar`, chosen by name with `get_loss`.

`batch` is a dict with "x0", "x1" (the input frames) and "y" (the true middle frame), and
`prediction` the network's middle frame; all NHWC float32 in [0, 1], RGB.

  l1       mean absolute error (the paper's main loss)
  l2       mean squared error
  ssim     1 - SSIM with an 11x11 Gaussian window, sigma 1.5 (the "MATLAB" SSIM), differentiable
  vgg      mean squared distance of VGG-19 relu4_4 features (needs local ImageNet weights)
  l1+vgg   l1 + nu * vgg, nu = 1e-5 by default (the replication used 1e-5 and 5e-5)

`motion_weighted_l1` weights l1 by each pixel's motion (the optical flow from the true middle
frame, as the flow-guided term below uses), for training that puts more of its signal on the
large motion.

An auxiliary term on the kernel maps rather than the frame, for flow-guided training:
`kernel_centroid_loss` pulls each kernel's centroid to the optical flow from the true middle
frame (privileged information, as in IFRNet's and RIFE's distillation), weighted by
`centroid_weight`, which anneals it to zero.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Batch = Mapping[str, jax.Array]
Loss = Callable[[Batch, jax.Array], jax.Array]

LOSSES = ("l1", "l2", "ssim", "vgg", "l1+vgg")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# The usual SSIM stabilisers for a data range of 1.
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2


def l1_loss(batch: Batch, prediction: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(prediction - batch["y"]))


def l2_loss(batch: Batch, prediction: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(prediction - batch["y"]))


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
  window = np.exp(-offsets**2 / (2 * sigma**2))
  return (window / window.sum()).astype(np.float32)


def _gaussian_filter(images: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable 'valid' Gaussian filtering of each channel of NHWC images."""
  channels = images.shape[-1]
  size = window.shape[0]
  # Depthwise convolution: one filter per channel (feature_group_count = channels).
  for shape in ((size, 1, 1, channels), (1, size, 1, channels)):
    kernel = jnp.broadcast_to(jnp.asarray(window).reshape(shape[:2] + (1, 1)), shape)
    images = jax.lax.conv_general_dilated(images, kernel, (1, 1), "VALID",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          feature_group_count=channels)
  return images


def ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean SSIM of NHWC images in [0, 1] with an 11x11 Gaussian window (sigma 1.5), 'valid' region,
  averaged over pixels, channels and the batch. Images must be at least 11x11."""
  window = _gaussian_window()
  mu_x, mu_y = _gaussian_filter(x, window), _gaussian_filter(y, window)
  var_x = _gaussian_filter(x * x, window) - mu_x**2
  var_y = _gaussian_filter(y * y, window) - mu_y**2
  cov = _gaussian_filter(x * y, window) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
      (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2))
  return jnp.mean(ssim_map)


def ssim_loss(batch: Batch, prediction: jax.Array) -> jax.Array:
  return 1.0 - ssim(prediction, batch["y"])


def make_vgg_loss(weights_path: str | os.PathLike | None) -> Loss:
  """The VGG-19 relu4_4 feature loss with ImageNet weights from a local file."""
  if weights_path is None:
    raise ValueError("the VGG loss needs ImageNet VGG-19 weights: pass a local file "
                     "(--vgg-weights PATH; torchvision .pth or .npz, see sepconv_jax.training.vgg)")
  from sepconv_jax.training.vgg import load_vgg19_features  # pylint: disable=import-outside-toplevel
  features = load_vgg19_features(weights_path)

  def vgg_loss(batch: Batch, prediction: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(features(prediction) - features(batch["y"])))

  return vgg_loss


def get_loss(name: str, *, nu: float = 1e-5, vgg_weights: str | os.PathLike | None = None,
             motion_weight: float = 0.0) -> Loss:
  """The loss called `name` (one of `LOSSES`); `nu` weights the VGG term of "l1+vgg", and
  `motion_weight` > 0 weights "l1" by each pixel's motion (`make_motion_weighted_l1`)."""
  if motion_weight and name != "l1":
    raise ValueError(f"motion_weight weights only the l1 loss, not {name!r}")
  if name == "l1":
    return make_motion_weighted_l1(motion_weight) if motion_weight else l1_loss
  if name == "l2":
    return l2_loss
  if name == "ssim":
    return ssim_loss
  if name == "vgg":
    return make_vgg_loss(vgg_weights)
  if name == "l1+vgg":
    vgg_loss = make_vgg_loss(vgg_weights)
    return lambda batch, prediction: l1_loss(batch, prediction) + nu * vgg_loss(batch, prediction)
  raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")


# Motion weighting: a pixel's weight grows linearly with its motion up to this many pixels (the
# full-frame validation's large-motion bucket starts here), then stays.
MOTION_WEIGHT_PIXELS = 16.0


def motion_weights(batch: Batch, weight: float) -> jax.Array:
  """(B, H, W, 1): 1 + `weight` x min(1, m / MOTION_WEIGHT_PIXELS), with m the larger of the two
  flows' lengths from the true middle frame ("flow0", "flow1" as `kernel_centroid_loss` takes them,
  here wherever the flow is, valid or not: a flow that fails its check is hard motion too)."""
  motion = jnp.maximum(jnp.linalg.norm(batch["flow0"], axis=-1),
                       jnp.linalg.norm(batch["flow1"], axis=-1))
  return (1.0 + weight * jnp.minimum(motion / MOTION_WEIGHT_PIXELS, 1.0))[..., None]


@functools.lru_cache(maxsize=8)
def make_motion_weighted_l1(weight: float) -> Loss:
  """l1 as a weighted mean over pixels, each weighted by `motion_weights(batch, weight)`: with
  `weight` 0 exactly `l1_loss`; with 3, a pixel moving 16 px or more counts four times a still
  one. Only for training (the batch needs the flows). Cached: one function per weight, so that the
  training step compiles once per setting."""

  def motion_weighted_l1(batch: Batch, prediction: jax.Array) -> jax.Array:
    weights = motion_weights(batch, weight)
    error = jnp.mean(jnp.abs(prediction - batch["y"]), axis=-1, keepdims=True)
    return jnp.sum(weights * error) / jnp.sum(weights)

  return motion_weighted_l1


# ------------------------------------------------------------------------------------------------
# Flow-guided kernels: an auxiliary loss on the kernel maps, not on the frame.


def kernel_centroids(kernel_map: jax.Array) -> jax.Array:
  """(B, H, W, K) 1D kernels -> (B, H, W): each kernel's expected tap offset from its centre, in
  pixels, under the normalised magnitudes |k_i| / sum |k| (SepConv's kernels may be negative)."""
  taps = kernel_map.shape[-1]
  offsets = jnp.arange(taps, dtype=jnp.float32) - taps // 2
  magnitude = jnp.abs(kernel_map)
  return jnp.sum(magnitude * offsets, axis=-1) / (jnp.sum(magnitude, axis=-1) + 1e-6)


def kernel_centroid_loss(batch: Batch, kernels) -> jax.Array:
  """Mean |centroid - flow| in pixels, over both frames and both axes, where the flow is valid.

  `kernels` is the network's `KernelMaps`; `batch` holds "flow0", "flow1" ((B, H, W, 2), (dx, dy)
  pixels from the true middle frame to x0 and x1) and "valid0", "valid1" ((B, H, W), 1 where the
  flow passed its forward-backward check), as `sepconv_data.pipeline.train_dataset(flows=True)` gives
  them. The vertical kernel of a frame should be centred at the flow's dy to that frame (it
  weights image row y + i - K//2) and the horizontal one at dx. Pixels moving farther than the
  kernels reach (K//2) are left out: no kernel can follow them.
  """
  reach = kernels.vertical0.shape[-1] // 2
  total = count = 0.0
  for vertical, horizontal, key in ((kernels.vertical0, kernels.horizontal0, "0"),
                                    (kernels.vertical1, kernels.horizontal1, "1")):
    flow = batch["flow" + key]
    mask = batch["valid" + key] * jnp.all(jnp.abs(flow) <= reach, axis=-1)
    error = (jnp.abs(kernel_centroids(horizontal) - flow[..., 0])
             + jnp.abs(kernel_centroids(vertical) - flow[..., 1]))
    total += jnp.sum(error * mask)
    count += 2 * jnp.sum(mask)
  return total / jnp.maximum(count, 1.0)


def centroid_weight(step: jax.Array, weight: float, anneal_steps: int | None) -> jax.Array:
  """`weight` at step 0, falling linearly to 0 at `anneal_steps` (None: constant)."""
  if anneal_steps is None:
    return jnp.asarray(weight, jnp.float32)
  return weight * jnp.clip(1.0 - step.astype(jnp.float32) / anneal_steps, 0.0, 1.0)
