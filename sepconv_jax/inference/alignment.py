"""Pre-alignment: move both frames part of the way towards the middle with classical optical flow.

SepConv's kernels gather each output pixel from a 51x51 window of each frame, and a network trained
on little data follows large motion poorly (the README's model card). Pre-alignment takes part of
that work off the network: OpenCV's DIS optical flow (no weights) between the two frames gives the
motion, each frame is warped `strength` of the way to the middle, and the network interpolates
between the warped frames, whose remaining motion is `1 - strength` of the original. The network
still decides every pixel, so where the flow is wrong (occlusions, fast thin objects) its kernels
can still reach the right place. The flow and the warp are `sepconv_data.flow.align_to_middle`.
A model says which strength it is meant for (`sepconv_jax.network.checkpoint.recommended_align`):
the default model 0.5 (half the motion scored best of 0, 0.5, 0.75 and 1 with it, BENCHMARKS.md),
a model trained with `--prealign S` S, any other 0.

Conventions: frames (B, H, W, 3) float32 NumPy arrays, values in [0, 1], RGB.
"""

from __future__ import annotations

import numpy as np

from sepconv_data.flow import align_to_middle

# Flows of frames above this many pixels are computed at half (or quarter...) resolution: DIS's
# cost grows with the pixel count, and its coarse-to-fine search needs no more for large frames.
MAX_FLOW_PIXELS = 1024 * 1024


def flow_downscale(height: int, width: int) -> int:
  """The power of two that brings a frame to at most MAX_FLOW_PIXELS for the flow."""
  downscale = 1
  while height * width > MAX_FLOW_PIXELS * downscale**2:
    downscale *= 2
  return downscale


def prealign(frame0: np.ndarray, frame1: np.ndarray, strength: float
             ) -> tuple[np.ndarray, np.ndarray]:
  """Both (B, H, W, 3) float32 frames warped `strength` (0 to 1) of the way to the middle.

  Strength 0 returns the frames unchanged; 1 warps them all the way (the network then sees two
  estimates of the middle frame).
  """
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"alignment strength={strength} must be in [0, 1]")
  if strength == 0.0:
    return frame0, frame1
  downscale = flow_downscale(*frame0.shape[1:3])
  aligned0, aligned1 = np.empty_like(frame0), np.empty_like(frame1)
  for index, (first, second) in enumerate(zip(frame0, frame1)):
    aligned0[index], aligned1[index] = align_to_middle(first, second, strength,
                                                       downscale=downscale)
  return aligned0, aligned1


def network_frames(aligned0, aligned1, captured0, captured1, reads_captured_frames: bool):
  """The network's input frames (B, H, W, C): the (pre-aligned) frames, followed on channels by
  the captured ones for a network that reads them (`SepConvConfig.reads_captured_frames`)."""
  if not reads_captured_frames:
    return aligned0, aligned1
  return (np.concatenate([aligned0, captured0], axis=-1),
          np.concatenate([aligned1, captured1], axis=-1))

