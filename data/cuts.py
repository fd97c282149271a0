"""Jump cuts: the colour-histogram test of whether two frames belong to one shot.

Used by patch extraction (`extract`: triplets across a cut are rejected) and by interpolation
(`sepconv_jax.inference.scene`: frames across a cut are repeated, not morphed), so that both
agree. NumPy and OpenCV only: inference imports this module and nothing heavier of this package.
"""

from __future__ import annotations

import cv2
import numpy as np

# Histogram bins per RGB channel and the total-variation distance above which two frames are a
# cut (measured in `extract`'s docstring and `sepconv_jax.inference.scene`'s).
DEFAULT_BINS = 8
DEFAULT_THRESHOLD = 0.2


def joint_histogram(frame: np.ndarray, bins: int) -> np.ndarray:
  """Normalised joint RGB histogram, `bins`**3 values summing to 1 (bin of v: v * bins // 256)."""
  if 256 % bins == 0:  # OpenCV's uniform 8-bit histogram: same bins, about 20x faster
    counts = cv2.calcHist([np.ascontiguousarray(frame)], [0, 1, 2], None, [bins] * 3,
                          [0, 256] * 3).ravel().astype(np.float64)  # exact counts
  else:
    q = (frame.astype(np.int32) * bins) >> 8
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    counts = np.bincount(index.ravel(), minlength=bins ** 3)
  return counts / (frame.shape[0] * frame.shape[1])


def histogram_distance(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
  """Total-variation distance in [0, 1] between two normalised histograms."""
  return 0.5 * float(np.abs(hist_a - hist_b).sum())


def histogram_difference(a: np.ndarray, b: np.ndarray, *, bins: int = 8) -> float:
  """Total-variation distance in [0, 1] between two frames' joint RGB histograms."""
  return histogram_distance(joint_histogram(a, bins), joint_histogram(b, bins))
