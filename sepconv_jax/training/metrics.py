"""Validation metrics on NHWC frames in [0, 1], per image (average them over a set yourself).

  psnr           over frames quantised to uint8 (clip, round, not truncate), data range 255, no
                 border crop: the field's convention (SepConv, DAIN, RIFE, FILM). Identical images
                 would score +inf; they are capped at `MAX_PSNR` so that averages stay finite.
  ssim_gaussian  SSIM with the 11x11 Gaussian window (sigma 1.5, the "MATLAB" SSIM, `losses.ssim`)
                 over the same quantised frames. Not scikit-image's default (7x7 uniform window),
                 which the published SepConv numbers use: label results accordingly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sepconv_jax.evaluation.scoring import MAX_PSNR  # the same cap as the NumPy scores
from sepconv_jax.training import losses



def quantize(frames: jax.Array) -> jax.Array:
  """[0, 1] floats -> the uint8 values they would be saved as (still float32, 0..255)."""
  return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0)


def psnr(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """(B,) PSNR in dB of uint8-quantised frames, data range 255."""
  error = quantize(prediction) - quantize(target)
  mse = jnp.mean(jnp.square(error), axis=tuple(range(1, error.ndim)))
  value = 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-12))
  return jnp.minimum(value, MAX_PSNR)


def ssim_gaussian(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """(B,) Gaussian-window SSIM of uint8-quantised frames (at least 11x11)."""
  one = lambda p, t: losses.ssim(p[None], t[None])
  return jax.vmap(one)(quantize(prediction) / 255.0, quantize(target) / 255.0)


def psnr_numpy(prediction: np.ndarray, target: np.ndarray) -> float:
  """PSNR of one pair of uint8 (or [0, 1] float) images, as a float; for checks and scripts."""
  to_u8 = lambda a: (a if a.dtype == np.uint8
                     else np.round(np.clip(a, 0.0, 1.0) * 255.0)).astype(np.float64)
  mse = np.mean((to_u8(prediction) - to_u8(target))**2)
  return MAX_PSNR if mse == 0 else float(min(MAX_PSNR, 10.0 * np.log10(255.0**2 / mse)))
