"""How far a model's kernels follow motion: its four kernel maps against the optical flow.

A SepConv output pixel is drawn from each input frame through an outer product of a vertical and
a horizontal 1D kernel. Per pixel and frame, under the kernels' normalised magnitudes |k_i| / sum |k|
(kernel weights may be negative):
  centroid  c = (E_horizontal[offset], E_vertical[offset]) in pixels: where in that frame the
            pixel is drawn from (the expected tap offset from the kernel's centre, as
            `sepconv_jax.training.losses.kernel_centroids` computes it).
  spread    sqrt(Var_horizontal[offset] + Var_vertical[offset]) in pixels: how widely it is drawn.
            A wide kernel averages many pixels: on a moving object, that is blur.

Compared with the DIS optical flow f from the true middle frame to that input frame (`flow0`,
`flow1` of `sepconv_data.flow.middle_flows`; only where the flow passes its forward-backward check),
over the pixels of each motion bucket (`scoring.MOTION_BUCKETS`: the larger |f| of the two frames,
as PSNR by motion buckets them), both frames' kernels together:
  followed  sum(c . f) / sum(|f|^2): the share of the motion the kernels follow, a least-squares
            slope: 1 when every centroid sits at the flow, 0 when the kernels sample in place (as
            frame averaging does). Motion beyond the kernels' reach (K // 2 pixels) cannot be
            followed in full and counts as it is.
  error     mean |c - f| in pixels.
  spread    mean spread in pixels.

Kernel maps are (H, W, K) float arrays in the frame's pixel grid, as
`sepconv_jax.Interpolator.kernel_maps` returns them; flows (H, W, 2) float32 (dx, dy) pixels.
NumPy only; no jax.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sepconv_jax.evaluation.scoring import MOTION_BUCKETS, motion_from_flows

# The additive per-bucket sums an item contributes; a set's statistics come from their totals.
SUM_FIELDS = ("pixels", "dot", "flow_squared", "error", "spread")


def centroid_and_spread(kernel_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(H, W, K) 1D kernels -> (centroid, variance), each (H, W) float64, in pixels (offsets from
  the centre tap) under the normalised magnitudes (module docstring)."""
  taps = kernel_map.shape[-1]
  offsets = np.arange(taps, dtype=np.float64) - taps // 2
  magnitude = np.abs(kernel_map.astype(np.float64))
  total = magnitude.sum(axis=-1, keepdims=True)
  weights = magnitude / np.where(total > 0, total, 1.0)  # an all-zero kernel: centroid 0
  centroid = weights @ offsets
  variance = weights @ offsets**2 - centroid**2
  return centroid, np.maximum(variance, 0.0)


def kernel_sums(maps: Sequence[np.ndarray], flow0: np.ndarray, valid0: np.ndarray,
                flow1: np.ndarray, valid1: np.ndarray) -> dict[str, dict[str, float]]:
  """One item's sums (`SUM_FIELDS`) per motion bucket name.

  Args:
    maps: (vertical0, horizontal0, vertical1, horizontal1), each (H, W, K); index = input frame.
    flow0, flow1: (H, W, 2) flow from the true middle frame to frame 0 and to frame 1.
    valid0, valid1: (H, W), nonzero where that flow is trusted.
  """
  vertical0, horizontal0, vertical1, horizontal1 = maps
  shape = flow0.shape[:2]
  for name, array in zip(("vertical0", "horizontal0", "vertical1", "horizontal1"), maps):
    if array.ndim != 3 or array.shape[:2] != shape:
      raise ValueError(f"{name}.shape={array.shape} must be (H, W, K) with (H, W) = {shape}")
  motion = motion_from_flows(flow0, flow1)
  sums = {name: dict.fromkeys(SUM_FIELDS, 0.0) for name, _, _ in MOTION_BUCKETS}
  for vertical, horizontal, flow, valid in ((vertical0, horizontal0, flow0, valid0),
                                            (vertical1, horizontal1, flow1, valid1)):
    centroid_x, variance_x = centroid_and_spread(horizontal)
    centroid_y, variance_y = centroid_and_spread(vertical)
    dot = centroid_x * flow[..., 0] + centroid_y * flow[..., 1]
    flow_squared = flow[..., 0].astype(np.float64)**2 + flow[..., 1].astype(np.float64)**2
    error = np.hypot(centroid_x - flow[..., 0], centroid_y - flow[..., 1])
    spread = np.sqrt(variance_x + variance_y)
    for name, low, high in MOTION_BUCKETS:
      pixels = (valid != 0) & (motion >= low) & (motion < high)
      bucket = sums[name]
      bucket["pixels"] += float(np.count_nonzero(pixels))
      for field, values in (("dot", dot), ("flow_squared", flow_squared), ("error", error),
                            ("spread", spread)):
        bucket[field] += float(values[pixels].sum())
  return sums


def add_sums(items: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
  """The per-bucket totals of several items' `kernel_sums`."""
  return {name: {field: sum(item[name][field] for item in items) for field in SUM_FIELDS}
          for name, _, _ in MOTION_BUCKETS}


def kernel_statistics(sums: Mapping[str, Mapping[str, float]]
                      ) -> dict[str, dict[str, float | None]]:
  """Per motion bucket: followed, error, spread (module docstring) and pixels (each pixel counts
  once per frame); None where a bucket has no trusted pixels (or, for followed, no motion)."""
  out = {}
  for name, _, _ in MOTION_BUCKETS:
    bucket = sums[name]
    pixels = bucket["pixels"]
    out[name] = {
        "followed": bucket["dot"] / bucket["flow_squared"] if bucket["flow_squared"] > 0 else None,
        "error": bucket["error"] / pixels if pixels else None,
        "spread": bucket["spread"] / pixels if pixels else None,
        "pixels": int(pixels),
    }
  return out
