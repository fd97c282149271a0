"""Classical optical flow (OpenCV's DIS) for data preparation, evaluation, flow-guided training
and pre-alignment (warping both input frames part of the way to the middle).

Conventions: frames are RGB uint8 (H, W, 3); a flow field is float32 (H, W, 2) in pixels,
`flow[y, x] = (dx, dy)`: the pixel (x, y) of the first frame is seen at (x + dx, y + dy) in the
second. DIS (dense inverse search) is in OpenCV's main build and needs no weights; the MEDIUM
preset, as for patch selection (`extract`).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

# Forward-backward consistency (UnFlow, Meister et al. 2018): a pixel's flow is trusted where
# |f(p) + b(p + f(p))|^2 < ALPHA (|f(p)|^2 + |b(p + f(p))|^2) + BETA.
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5

# The smallest frame side DIS is given (`dis_flow` pads smaller frames to it).
MIN_DIS_SIZE = 16

_local = threading.local()  # one DIS instance per thread (tf.data calls from several)


def _settings(dis: cv2.DISOpticalFlow) -> tuple[int, ...]:
  return (dis.getFinestScale(), dis.getPatchSize(), dis.getPatchStride(),
          dis.getGradientDescentIterations(), dis.getVariationalRefinementIterations())


def _dis() -> cv2.DISOpticalFlow:
  if not hasattr(_local, "dis"):
    _local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    _local.settings = _settings(_local.dis)
  return _local.dis


def _calc(grey0: np.ndarray, grey1: np.ndarray) -> np.ndarray:
  dis = _dis()
  flow = dis.calc(grey0, grey1, None)
  # DIS changes its own settings for good on a frame too small for its pyramid (under about 46
  # px: the finest scale drops from 1 to 0), and every later flow of that instance would differ:
  # start a fresh one instead.
  if _settings(dis) != _local.settings:
    del _local.dis
  return flow


def _grey(frame: np.ndarray, downscale: int) -> np.ndarray:
  grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
  if downscale > 1:
    grey = cv2.resize(grey, (grey.shape[1] // downscale, grey.shape[0] // downscale),
                      interpolation=cv2.INTER_AREA)
  return grey


def dis_flow(first: np.ndarray, second: np.ndarray, *, downscale: int = 1) -> np.ndarray:
  """The flow from `first` to `second` (module docstring), computed at 1/`downscale` resolution
  and given in that resolution's pixels times `downscale` (full-resolution pixels). Frames of
  any size, down to 1x1."""
  grey0, grey1 = _grey(first, downscale), _grey(second, downscale)
  height, width = grey0.shape
  # DIS rejects frames under 8 px a side or under 12 px on both (its 8 px patches and pyramid):
  # smaller ones are padded with their edges, and the flow cropped back.
  pad_y, pad_x = max(0, MIN_DIS_SIZE - height), max(0, MIN_DIS_SIZE - width)
  if pad_y or pad_x:
    grey0, grey1 = (cv2.copyMakeBorder(grey, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
                    for grey in (grey0, grey1))
  return _calc(grey0, grey1)[:height, :width] * downscale


def flow_magnitude(first: np.ndarray, second: np.ndarray, *, downscale: int = 1) -> np.ndarray:
  """|flow| from `first` to `second` in full-resolution pixels, (H / downscale, W / downscale)."""
  flow = dis_flow(first, second, downscale=downscale)
  return np.hypot(flow[..., 0], flow[..., 1])


def consistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
  """(H, W) bool: where `forward` (a to b) and `backward` (b to a) agree (module constants)."""
  height, width = forward.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                               np.arange(height, dtype=np.float32))
  # The backward flow at each pixel's forward target, bilinear; targets outside the frame fail.
  map_x, map_y = grid_x + forward[..., 0], grid_y + forward[..., 1]
  back = cv2.remap(backward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=(np.nan, np.nan))
  inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
  error = np.sum((forward + back) ** 2, axis=-1)
  bound = CONSISTENCY_ALPHA * (np.sum(forward ** 2, -1) + np.sum(back ** 2, -1)) + CONSISTENCY_BETA
  return inside & np.nan_to_num(error < bound, nan=False)


def middle_flows(x0: np.ndarray, y: np.ndarray, x1: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(flow0, valid0, flow1, valid1): the flows from the middle frame `y` to `x0` and to `x1`
  (float32 (H, W, 2)) and where each passes the forward-backward check (float32 0/1 (H, W))."""
  out = []
  for other in (x0, x1):
    forward, backward = dis_flow(y, other), dis_flow(other, y)
    out += [forward.astype(np.float32), consistent(forward, backward).astype(np.float32)]
  return tuple(out)


def estimated_middle_flows(first: np.ndarray, second: np.ndarray, *, downscale: int = 1
                           ) -> tuple[np.ndarray, np.ndarray]:
  """(F_t0, F_t1): the flows from the (unseen) middle frame to `first` and to `second`, estimated
  from the DIS flows between the two (RGB uint8 (H, W, 3)) for t = 1/2, the Super SloMo
  approximation (Jiang et al. 2018, eq. 4): F_t0 = -t(1-t) F_01 + t^2 F_10, F_t1 = (1-t)^2 F_01 -
  t(1-t) F_10. With `downscale`, computed at that fraction of the resolution and resized back.
  Float32 (H, W, 2), module conventions."""
  height, width = first.shape[:2]

  def full_size(flow):
    if flow.shape[:2] == (height, width):
      return flow
    return cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)

  f01 = full_size(dis_flow(first, second, downscale=downscale))
  f10 = full_size(dis_flow(second, first, downscale=downscale))
  return 0.25 * (f10 - f01), 0.25 * (f01 - f10)


def warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
  """Backward warp: out[y, x] = frame[y + dy, x + dx], bilinear, edges replicated."""
  height, width = frame.shape[:2]
  grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                               np.arange(height, dtype=np.float32))
  return cv2.remap(np.ascontiguousarray(frame), grid_x + flow[..., 0], grid_y + flow[..., 1],
                   cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_to_middle(first: np.ndarray, second: np.ndarray, strength: float, *,
                    downscale: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Both frames (H, W, 3), float32 in [0, 1] RGB, warped `strength` of the way to the middle
  along `estimated_middle_flows` (the flow from their uint8 rounding): the motion left between
  them is `1 - strength` of the original."""
  return warps_to_middle(first, second, (strength,), downscale=downscale)[0]


def warps_to_middle(first: np.ndarray, second: np.ndarray, strengths: tuple[float, ...], *,
                    downscale: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
  """`align_to_middle` at each of `strengths`, from one computation of the flows."""
  to_uint8 = lambda frame: np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
  flow0, flow1 = estimated_middle_flows(to_uint8(first), to_uint8(second), downscale=downscale)
  return [(warp(first, strength * flow0), warp(second, strength * flow1))
          for strength in strengths]
