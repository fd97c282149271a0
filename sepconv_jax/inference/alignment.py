"""Pre-alignment: move both frames part of the way towards the middle with classical optical flow.

SepConv's kernels gather each output pixel from a 51x51 window of each frame, and a network trained
on little data follows large motion poorly (the README's model card). Pre-alignment takes part of
that work off the network: OpenCV's DIS optical flow (no weights) between the two frames gives the
motion, each frame is warped `strength` of the way to the middle, and the network interpolates
between the warped frames, whose remaining motion is `1 - strength` of the original. The network
still decides every pixel, so where the flow is wrong (occlusions, fast thin objects) its kernels
can still reach the right place. The flow and the warp are `sepconv_data.flow.warps_to_middle`.
After the network, `blend_consensus` can blend the mean of the two frames warped all the way to
the middle along the same flow into the network's frame, where those warped frames agree with each
other and with the network (sharp where the flow is right; the network's frame where it is not).
A model says which strength it is meant for (`sepconv_jax.network.checkpoint.recommended_align`):
the default model 0.5 (half the motion scored best of 0, 0.5, 0.75 and 1 with it, BENCHMARKS.md),
a model trained with `--prealign S` S, any other 0; and its consensus weight
(`recommended_consensus`): the default model 0.75, any other 0.

Conventions: frames (B, H, W, 3) float32 NumPy arrays, values in [0, 1], RGB (the blend takes any
channel order).
"""

from __future__ import annotations

import cv2
import numpy as np

from sepconv_data.flow import warps_to_middle

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
  return warp_pairs(frame0, frame1, (strength,))[0]


def warp_pairs(frame0: np.ndarray, frame1: np.ndarray, strengths: tuple[float, ...]
               ) -> list[tuple[np.ndarray, np.ndarray]]:
  """`prealign` at each of `strengths` (each 0 to 1), from one flow computation per pair."""
  for strength in strengths:
    if not 0.0 <= strength <= 1.0:
      raise ValueError(f"alignment strength={strength} must be in [0, 1]")
  if not any(strengths):
    return [(frame0, frame1) for _ in strengths]
  downscale = flow_downscale(*frame0.shape[1:3])
  # Strength 0 is the identity exactly, and costs no warp (with consensus but no pre-alignment,
  # only the full warp is needed).
  moving = tuple(strength for strength in strengths if strength)
  pairs = [(np.empty_like(frame0), np.empty_like(frame1)) for _ in moving]
  for index, (first, second) in enumerate(zip(frame0, frame1)):
    for (out0, out1), (warped0, warped1) in zip(
        pairs, warps_to_middle(first, second, moving, downscale=downscale)):
      out0[index], out1[index] = warped0, warped1
  warped = iter(pairs)
  return [next(warped) if strength else (frame0, frame1) for strength in strengths]


# Consensus blending (`blend_consensus`), tuned on the 30 held-out DAVIS gap-2 triplets with the
# default model and confirmed on UCF101 (the model card, 2026-12-07): both disagreement maps are
# smoothed over this many pixels (a Gaussian's sigma), so that a pixel is trusted by its
# neighbourhood, not by a lucky match of its own colour ...
CONSENSUS_SMOOTHING = 6.0
# ... and the weight falls as exp(-(d / tolerance)^2) with each, in [0, 1] pixel values: the two
# frames warped all the way against each other, and their mean against the network's frame.
WARP_TOLERANCE = 12 / 255
NETWORK_TOLERANCE = 24 / 255


def _smoothed_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(B, H, W, 1): the mean absolute difference over channels, Gaussian-smoothed per frame."""
  difference = np.abs(a - b).mean(axis=-1)
  return np.stack([cv2.GaussianBlur(d, (0, 0), CONSENSUS_SMOOTHING) for d in difference])[..., None]


def consensus_weight(network_frame: np.ndarray, middle0: np.ndarray, middle1: np.ndarray,
                     strength: float) -> np.ndarray:
  """(B, H, W, 1) float32 in [0, strength]: how much of the warped frames' mean `blend_consensus`
  puts into each pixel. All inputs (B, H, W, C) float32 in [0, 1], any channel order."""
  consensus = 0.5 * (middle0 + middle1)
  warp_disagreement = _smoothed_difference(middle0, middle1)
  network_disagreement = _smoothed_difference(network_frame, consensus)
  weight = strength * np.exp(-(warp_disagreement / WARP_TOLERANCE) ** 2
                             - (network_disagreement / NETWORK_TOLERANCE) ** 2)
  return weight.astype(np.float32)


def blend_consensus(network_frame: np.ndarray, middle0: np.ndarray, middle1: np.ndarray,
                    strength: float) -> np.ndarray:
  """The network's middle frame with the mean of `middle0` and `middle1` (the two input frames
  warped all the way to the middle, `warp_pairs(..., (1.0,))`) blended in, at most `strength`
  (0 to 1) of it, where those two warped frames agree with each other and with the network.

  Two estimates of the middle frame that fail in different places: the flow's warp is sharp where
  the flow is right but wrong where it fails (occlusions, fast thin objects), where the two warped
  frames disagree; the network is right more often there but blurs. Where both warped frames and
  the network agree, their mean is a better estimate than either (the model card: +0.3 dB on the
  held-out DAVIS frames, +0.09 dB on UCF101 with the default model, large motion unchanged). The
  weights come from the input frames and the network's output alone, never the true frame.
  (B, H, W, C) float32 in [0, 1], any channel order, the same for all three; strength 0 returns
  `network_frame` unchanged.
  """
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"consensus strength={strength} must be in [0, 1]")
  if strength == 0.0:
    return network_frame
  weight = consensus_weight(network_frame, middle0, middle1, strength)
  return (1.0 - weight) * network_frame + weight * (0.5 * (middle0 + middle1))


def network_frames(aligned0, aligned1, captured0, captured1, reads_captured_frames: bool):
  """The network's input frames (B, H, W, C): the (pre-aligned) frames, followed on channels by
  the captured ones for a network that reads them (`SepConvConfig.reads_captured_frames`)."""
  if not reads_captured_frames:
    return aligned0, aligned1
  return (np.concatenate([aligned0, captured0], axis=-1),
          np.concatenate([aligned1, captured1], axis=-1))

