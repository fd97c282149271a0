"""Scores of an interpolated frame against the true one, and the baselines a model must beat.

Conventions
  Frames    (H, W, 3) uint8 RGB, as `sepconv_jax.inference.media.read_image` returns them and
            `sepconv_jax.Interpolator` takes and gives them.
  Metrics   as the field reports them: all on RGB frames quantised to uint8 (float predictions in
            [0, 1] are clipped and rounded, not truncated), data range 255, no border crop, one
            value per item, averaged over the set:
              psnr           MSE in float64 over every pixel and channel. Identical frames are
                             capped at `MAX_PSNR` (`sepconv_jax.training.metrics` imports it) so means stay finite.
              ssim           scikit-image's `structural_similarity(channel_axis=-1, data_range=255)`
                             with its defaults (7x7 uniform window, sample covariance), averaged
                             over channels: the SSIM the published SepConv numbers use.
              ssim_gaussian  the "MATLAB" SSIM of Wang et al.: 11x11 Gaussian window, sigma 1.5,
                             population covariance (scikit-image's documented settings for it);
                             optional, always labelled as such.
              psnr_masked    PSNR inside the motion region only, as DVF's evaluation script
                             computes it: MSE = sum(((p - t) * m)^2) / (3 sum(m)) for a 0/1
                             region m. Items with an empty region (or identical regions) have no
                             value and are left out of its mean, as in that script.
              psnr_motion    (optional) PSNR by motion magnitude, `psnr_masked` over the pixels of
                             each of `MOTION_BUCKETS`: a pixel's motion is the larger |DIS optical
                             flow| (OpenCV, full resolution) from the true middle frame to either
                             input frame, so ">16px" is where an object moves more than 16 pixels
                             between the middle and an input frame.

NumPy, scikit-image and (for the motion buckets) OpenCV's DIS flow; no jax.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from skimage.metrics import structural_similarity

BASELINE_NAMES = ("average", "repeat")
# The cap on PSNR for identical frames, so that means stay finite (also the in-graph
# `sepconv_jax.training.metrics.psnr` used by training).
MAX_PSNR = 100.0
# (name, lower, upper) in pixels of motion between the middle frame and the farther input frame.
MOTION_BUCKETS = (("<4px", 0.0, 4.0), ("4-16px", 4.0, 16.0), (">16px", 16.0, math.inf))

SSIM_LABEL = "SSIM (scikit-image: 7x7 uniform window)"
SSIM_GAUSSIAN_LABEL = "SSIM-G (11x11 Gaussian, sigma 1.5: 'MATLAB' SSIM)"


# ------------------------------------------------------------------------------------------------
# Metrics


def to_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 as is; floats in [0, 1] clipped, scaled and rounded (not truncated)."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {image.dtype}")
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  prediction, truth = to_uint8(prediction), to_uint8(truth)
  if prediction.shape != truth.shape or prediction.ndim != 3:
    raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must be the same "
                     "(H, W, C)")
  return prediction, truth


def psnr(prediction: np.ndarray, truth: np.ndarray) -> float:
  """PSNR in dB over all pixels and channels of uint8-quantised frames, data range 255."""
  prediction, truth = _pair(prediction, truth)
  mse = np.mean((prediction.astype(np.float64) - truth.astype(np.float64))**2)
  return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10.0 * math.log10(255.0**2 / mse))


def ssim(prediction: np.ndarray, truth: np.ndarray) -> float:
  """scikit-image's default SSIM (7x7 uniform window), data range 255, mean over channels."""
  prediction, truth = _pair(prediction, truth)
  return float(structural_similarity(prediction, truth, channel_axis=-1, data_range=255))


def ssim_gaussian(prediction: np.ndarray, truth: np.ndarray) -> float:
  """The 'MATLAB' SSIM: 11x11 Gaussian window (sigma 1.5), population covariance, range 255."""
  prediction, truth = _pair(prediction, truth)
  return float(structural_similarity(prediction, truth, channel_axis=-1, data_range=255,
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False))


def psnr_masked(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float | None:
  """PSNR inside `mask` ((H, W) bool or 0/1 weights); None for an empty or error-free region."""
  prediction, truth = _pair(prediction, truth)
  weight = np.asarray(mask, np.float64)
  if weight.shape != prediction.shape[:2]:
    raise ValueError(f"mask {weight.shape} does not match the frames {prediction.shape[:2]}")
  total = weight.sum()
  if total == 0:
    return None
  error = (prediction.astype(np.float64) - truth.astype(np.float64)) * weight[..., None]
  mse = np.sum(error**2) / (prediction.shape[2] * total)
  return None if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def motion_magnitude(first: np.ndarray, second: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """(H, W) float32 pixels: the larger |DIS flow| from `truth` to `first` and to `second`."""
  from sepconv_data.flow import dis_flow  # OpenCV's DIS  # pylint: disable=import-outside-toplevel
  truth = to_uint8(truth)
  return motion_from_flows(dis_flow(truth, to_uint8(first)), dis_flow(truth, to_uint8(second)))


def motion_from_flows(flow0: np.ndarray, flow1: np.ndarray) -> np.ndarray:
  """(H, W) float32: the larger |flow| of two (H, W, 2) flows from the middle frame to the inputs
  (`motion_magnitude` for flows already computed, e.g. by `sepconv_data.flow.middle_flows`)."""
  return np.maximum(np.hypot(flow0[..., 0], flow0[..., 1]),
                    np.hypot(flow1[..., 0], flow1[..., 1])).astype(np.float32)


def psnr_by_motion(prediction: np.ndarray, truth: np.ndarray, motion: np.ndarray
                   ) -> dict[str, float | None]:
  """`psnr_masked` over the pixels of each of `MOTION_BUCKETS` (None where a bucket is empty)."""
  return {name: psnr_from_squared_error(*sums)
          for name, sums in squared_error_by_motion(prediction, truth, motion).items()}


def squared_error_by_motion(prediction: np.ndarray, truth: np.ndarray, motion: np.ndarray
                            ) -> dict[str, tuple[float, int]]:
  """Per `MOTION_BUCKETS` name, (sum of squared errors, number of values) over the bucket's
  pixels and all channels, in 0-255 units: additive over items, for `psnr_from_squared_error` of a
  whole set's pixels together."""
  prediction, truth = _pair(prediction, truth)
  squared = np.sum((prediction.astype(np.float64) - truth.astype(np.float64)) ** 2, axis=-1)
  sums = {}
  for name, low, high in MOTION_BUCKETS:
    inside = (motion >= low) & (motion < high)
    sums[name] = (float(squared[inside].sum()), int(inside.sum()) * prediction.shape[2])
  return sums


def psnr_from_squared_error(total: float, count: int) -> float | None:
  """PSNR of a mean squared error given as a sum over `count` values; None for no values or no
  error."""
  return None if count == 0 or total == 0 else 10.0 * math.log10(255.0**2 * count / total)


# ------------------------------------------------------------------------------------------------
# Baselines: the same (first, second) -> uint8 signature as a model's predictor.


def average_baseline(first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """Frame averaging, rounded to uint8 (ties to even, as the model's output is rounded)."""
  return np.round((first.astype(np.float32) + second.astype(np.float32)) / 2).astype(np.uint8)


def repeat_baseline(first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """Frame repetition: the first frame stands in for the middle one."""
  del second
  return np.array(first, copy=True)


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": average_baseline,
    "repeat": repeat_baseline,
}
