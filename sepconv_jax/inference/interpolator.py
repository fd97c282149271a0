"""Frame interpolation on arrays: pad, run the network (jit-compiled per size), crop, convert.

Conventions of the arrays a user passes in and gets back (the network's own conventions are in
`sepconv_jax.network.model`):
  Layout   (B, H, W, 3) or a single frame (H, W, 3), channels last.
  Colour   RGB. If the checkpoint's metadata says its weights expect BGR (the published weights
           do), the channels are swapped on the way in and back on the way out.
  Values   uint8 in [0, 255] (the result is uint8, rounded) or float in [0, 1] (the result is
           not clipped, as the network produces it: a NumPy array of the input's float dtype, or
           a float32 jax.Array for jax.Array input). Float frames must be finite and within
           [-FLOAT_TOLERANCE, 1 + FLOAT_TOLERANCE] (ValueError otherwise: 0..255 floats or a NaN
           would silently give garbage); the tolerance leaves room for a model's own slight
           overshoot, which `multiply` feeds back in.
  Sizes    Any. Frames are replicate-padded by the chosen policy (`paper` or `improved`) and
           cropped back. Frames larger than `max_untiled_pixels` are interpolated in overlapping
           tiles that are blended with linear ramps, so memory stays bounded at 1080p and 4K.
Ensemble Optional (`ensemble=True`): the network also runs on the pair in reverse time order and
           the two middle frames are averaged, twice the work for a cleaner result (self-ensembling,
           as in SepConv++).
Alignment Optional (`align=S`, S in (0, 1]): before the network, both frames are warped S of the
           way to the middle along OpenCV's DIS optical flow, so the network has less motion to
           follow (`sepconv_jax.inference.alignment`; about 0.1 s a 854x480 pair on the CPU).
           0 runs the network alone, as published. A network with unaligned sources or
           captured input (`SepConvConfig.reads_captured_frames`) gets both the pre-aligned and
           the captured frames.
           A checkpoint recommends its own strength
           (`recommended_align`: the default model 0.5, which scores higher, BENCHMARKS.md), which
           `from_checkpoint` and `default` use unless told otherwise.
Consensus Optional (`consensus=W`, W in (0, 1]): after the network, the mean of the two frames
           warped all the way to the middle along the same flow is blended into its frame, at
           most W of it, where those warped frames agree with each other and with the network
           (`alignment.blend_consensus`). A checkpoint recommends its own weight
           (`recommended_consensus`: the default model 0.75), as for the alignment.
Precision The network's convolutions run in `precision` ("float32", or "bfloat16": bfloat16
           operands with float32 accumulation, on the CPU's bfloat16 units through oneDNN); None
           picks the backend's default (`pallas_kernels.conv.default_precision`). The weights and
           everything outside the convolutions stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pallas_kernels.conv import describe as describe_conv, xla_compiler_options
from sepconv_jax.inference.alignment import blend_consensus, network_frames, warp_pairs
from sepconv_jax.network.checkpoint import (load_model, recommended_align,
                                            recommended_consensus)
from sepconv_jax.network.model import ConvOptions, KernelMaps, SepConvNet
from sepconv_jax.network.padding import DEFAULT_POLICY, POLICIES, run_padded

# Above this many pixels per frame, tile (1280x720 untiled needs a few GB with the full network).
DEFAULT_MAX_UNTILED_PIXELS = 1280 * 736
FACTORS = (2, 4, 8)
FLOAT_TOLERANCE = 0.1
# Where the project's default model lives once one ships (see the README).
DEFAULT_MODEL_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights" / "default"


@dataclasses.dataclass(frozen=True)
class TileSettings:
  """Overlapping tiles for large frames.

  Attributes:
    size: Edge of a square tile in pixels. All tiles have this size (border tiles are shifted
      inwards), so one compilation serves a whole frame.
    overlap: Pixels shared by neighbouring tiles; the blend ramps over them. The network sees
      about this much context past each tile's kept interior.
  """
  size: int = 512
  overlap: int = 128

  def __post_init__(self):
    if self.size < 32 or not 0 <= 2 * self.overlap < self.size:
      raise ValueError(f"tiles: size={self.size} must be >= 32 and overlap={self.overlap} "
                       "in [0, size/2)")


def _tile_starts(length: int, size: int, overlap: int) -> list[int]:
  """Starts of tiles of `size` covering [0, length) with at least `overlap` shared pixels."""
  if length <= size:
    return [0]
  step = size - overlap
  count = -(-(length - overlap) // step)
  # Spread the tiles evenly so that the last one ends exactly at `length`.
  return [round(i * (length - size) / (count - 1)) for i in range(count)]


def _blend_weights(tile: int, starts: Sequence[int], index: int) -> np.ndarray:
  """Weights along one axis for tile `index`: 1, ramping linearly to 0 over each shared edge."""
  weights = np.ones(tile, np.float32)
  if index > 0:
    shared = starts[index - 1] + tile - starts[index]
    weights[:shared] = (np.arange(shared, dtype=np.float32) + 0.5) / shared
  if index < len(starts) - 1:
    shared = starts[index] + tile - starts[index + 1]
    weights[tile - shared:] = np.minimum(
        weights[tile - shared:], ((np.arange(shared, dtype=np.float32) + 0.5) / shared)[::-1])
  return weights


class Interpolator:
  """Interpolates the frame halfway between two frames, with any SepConv model.

    interpolator = Interpolator.from_checkpoint("path/to/checkpoint")
    middle = interpolator(first, second)          # arrays, see the module docstring
    frames = interpolator.multiply(first, second, factor=4)  # the 3 frames in between
  """

  def __init__(self, model: SepConvNet, *, channel_order: str = "RGB",
               padding: str = DEFAULT_POLICY,
               max_untiled_pixels: int | None = DEFAULT_MAX_UNTILED_PIXELS,
               tiles: TileSettings = TileSettings(), ensemble: bool = False,
               align: float = 0.0, consensus: float = 0.0, precision: str | None = None,
               conv_impl: str | None = None,
               compiler_options: dict[str, str] | None = None):
    """
    Args:
      model: The network.
      channel_order: The channel order the model's weights expect ("RGB" or "BGR").
      padding: "improved" (default) or "paper", see `sepconv_jax.network.padding`.
      max_untiled_pixels: Frames with more pixels are tiled; None never tiles, 0 always does.
      tiles: Tile size and overlap for large frames.
      ensemble: Average the middle frames of (first, second) and (second, first): twice the
        work, about 0.1 dB more PSNR on UCF101 with the default model (BENCHMARKS.md).
      align: Pre-alignment strength in [0, 1] (module docstring); 0 runs the network alone.
        (`from_checkpoint` and `default` pass the checkpoint's recommendation.)
      consensus: The most weight in [0, 1] that the mean of the frames warped all the way to the
        middle gets where they agree (module docstring); 0 never blends. (`from_checkpoint` and
        `default` pass the checkpoint's recommendation.)
      precision: The convolutions' compute precision, "float32" or "bfloat16"; None for the
        backend's default (see the module docstring).
      conv_impl: The convolutions' implementation, "onednn" or "xla"; None for the backend's
        fastest (`pallas_kernels.conv.default_conv_impl`).
      compiler_options: XLA options for compiling the network; None for those that make the
        chosen convolution path fastest (`pallas_kernels.conv.xla_compiler_options`).
    """
    if padding not in POLICIES:
      raise ValueError(f"padding={padding!r} must be one of {POLICIES}")
    if channel_order not in ("RGB", "BGR"):
      raise ValueError(f"channel_order={channel_order!r} must be 'RGB' or 'BGR'")
    self.config = model.config
    self.channel_order = channel_order
    self.padding = padding
    self.max_untiled_pixels = max_untiled_pixels
    self.tiles = tiles
    self.ensemble = ensemble
    if not 0.0 <= align <= 1.0:
      raise ValueError(f"align={align} must be in [0, 1]")
    self.align = float(align)
    if not 0.0 <= consensus <= 1.0:
      raise ValueError(f"consensus={consensus} must be in [0, 1]")
    self.consensus = float(consensus)
    # Forward only: never differentiated, so layers may hand each other bfloat16 operands.
    self.conv = ConvOptions(precision, conv_impl, forward_only=True).resolved()
    graphdef, state = nnx.split(model)

    if compiler_options is None:
      compiler_options = xla_compiler_options(impl=self.conv.impl, precision=self.conv.precision)

    # Compiled once per padded size: frames that pad to the same size share the compilation.
    @functools.partial(jax.jit, compiler_options=compiler_options)
    def network(state, frame0, frame1):
      return nnx.merge(graphdef, state)(frame0, frame1, conv=self.conv)

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def kernel_network(state, frame0, frame1):
      return nnx.merge(graphdef, state).kernel_maps(frame0, frame1, conv=self.conv)

    self._state = state
    self._network = network
    self._kernel_network = kernel_network

  @property
  def precision(self) -> str:
    return self.conv.precision

  def describe_compute(self) -> str:
    """One line on how the network runs, e.g. "oneDNN 3.2.0 (avx512_core_bf16), bfloat16"."""
    return describe_conv(impl=self.conv.impl, precision=self.conv.precision)

  def describe_alignment(self) -> str:
    """", pre-aligned 0.5 of the way (DIS flow), consensus 0.75" for the summaries, or "" with
    neither."""
    return ((f", pre-aligned {self.align:g} of the way (DIS flow)" if self.align else "")
            + (f", consensus {self.consensus:g}" if self.consensus else ""))

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike, padding: str = DEFAULT_POLICY,
                      align: float | None = None, consensus: float | None = None,
                      **kwargs) -> Interpolator:
    """Loads a checkpoint written by `sepconv_jax.save_model` (or converted published weights);
    `align` and `consensus` None are the checkpoint's own recommendations (`recommended_align`,
    `recommended_consensus`)."""
    model, metadata = load_model(path)
    if align is None:
      align = recommended_align(metadata)
    if consensus is None:
      consensus = recommended_consensus(metadata)
    return cls(model, channel_order=metadata["channel_order"], padding=padding, align=align,
               consensus=consensus, **kwargs)

  @classmethod
  def default(cls, padding: str = DEFAULT_POLICY, **kwargs) -> Interpolator:
    """The project's default model, shipped in the package (see the README's model card), with
    its recommended pre-alignment (0.5) and consensus (0.75) unless `align` and `consensus` say
    otherwise."""
    if not DEFAULT_MODEL_DIR.is_dir():
      raise FileNotFoundError(
          f"no default model shipped yet at {DEFAULT_MODEL_DIR}; pass a checkpoint "
          "(Interpolator.from_checkpoint, or --model on the command line)")
    return cls.from_checkpoint(DEFAULT_MODEL_DIR, padding=padding, **kwargs)

  # ------------------------------------------------------------------------------------------

  def _interpolate_padded(self, frame0: jax.Array, frame1: jax.Array) -> jax.Array:
    """The network on frames of any size (padded and cropped back), ensembled if asked."""
    network = functools.partial(self._network, self._state)
    if self.ensemble:
      forward = network
      # Padded and cropped once; two calls rather than one of twice the batch, so that the
      # memory of a call stays what it was.
      network = lambda padded0, padded1: 0.5 * (forward(padded0, padded1)
                                                + forward(padded1, padded0))
    return run_padded(network, frame0, frame1, policy=self.padding,
                      kernel_size=self.config.kernel_size)

  def _interpolate_float(self, frame0: jax.Array, frame1: jax.Array) -> jax.Array:
    """(B, H, W, 3) float32 in the model's channel order -> the same."""
    captured = frame0, frame1
    if self.align or self.consensus:
      (frame0, frame1), middles = self._warp(frame0, frame1)
    frame0, frame1 = network_frames(frame0, frame1, *captured,
                                    self.config.reads_captured_frames)
    height, width = frame0.shape[1:3]
    if self.max_untiled_pixels is not None and height * width > self.max_untiled_pixels:
      out = self._interpolate_tiled(frame0, frame1)
    else:
      out = self._interpolate_padded(frame0, frame1)
    if self.consensus:
      out = jnp.asarray(blend_consensus(np.asarray(out, np.float32), *middles, self.consensus))
    return out

  def _warp(self, frame0: jax.Array, frame1: jax.Array):
    """`alignment.warp_pairs` on the host, whole frames (before any tiling), the flow of the RGB
    frames: ((the pair pre-aligned `align` of the way), (the pair warped all the way, NumPy,
    or None without consensus)), in the model's channel order."""
    flip = self.channel_order == "BGR"
    rgb0, rgb1 = (np.asarray(f[..., ::-1] if flip else f, np.float32) for f in (frame0, frame1))
    strengths = (self.align, 1.0) if self.consensus else (self.align,)
    pairs = [tuple(f[..., ::-1] if flip else f for f in pair)
             for pair in warp_pairs(rgb0, rgb1, strengths)]
    aligned = tuple(jnp.asarray(f) for f in pairs[0])
    return aligned, (pairs[1] if self.consensus else None)

  def _interpolate_tiled(self, frame0: jax.Array, frame1: jax.Array) -> jax.Array:
    batch, height, width = frame0.shape[:3]
    size, overlap = self.tiles.size, self.tiles.overlap
    rows, cols = _tile_starts(height, size, overlap), _tile_starts(width, size, overlap)
    tile_h, tile_w = min(size, height), min(size, width)
    total = np.zeros((batch, height, width, 3), np.float32)
    weight_sum = np.zeros((1, height, width, 1), np.float32)
    for row_index, y in enumerate(rows):
      row_weights = _blend_weights(tile_h, rows, row_index)
      for col_index, x in enumerate(cols):
        weights = np.outer(row_weights, _blend_weights(tile_w, cols, col_index))
        weights = weights[None, :, :, None]
        window = (slice(None), slice(y, y + tile_h), slice(x, x + tile_w))
        tile = self._interpolate_padded(frame0[window], frame1[window])
        total[window] += np.asarray(tile) * weights
        weight_sum[window] += weights
    return jnp.asarray(total / weight_sum)

  def _model_frames(self, first, second) -> tuple[jax.Array, jax.Array, bool, bool, object]:
    """Checks a user's pair (module docstring) and converts it for the network.

    Returns (frame0, frame1, single, is_uint8, numpy_dtype): (B, H, W, 3) float32 in [0, 1] in the
    model's channel order; whether the pair was single frames, uint8, and its NumPy float dtype
    (None for jax.Array input).
    """
    first, second = (x if isinstance(x, jax.Array) else np.asarray(x) for x in (first, second))
    if first.shape != second.shape:
      raise ValueError(f"frames differ in shape: {first.shape} and {second.shape}")
    if first.dtype != second.dtype:
      raise ValueError(f"frames differ in dtype: {first.dtype} and {second.dtype}")
    single = first.ndim == 3
    if first.ndim not in (3, 4) or first.shape[-1] != 3:
      raise ValueError(f"frames must be (H, W, 3) or (B, H, W, 3) RGB, got shape {first.shape}")
    is_uint8 = first.dtype == np.uint8
    if not is_uint8 and not jnp.issubdtype(first.dtype, jnp.floating):
      raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {first.dtype}")
    if not is_uint8:
      for name, frame in (("first", first), ("second", second)):
        low, high = (float(f(frame)) for f in (jnp.min, jnp.max))
        if not (np.isfinite(low) and np.isfinite(high)):
          raise ValueError(f"{name} frame has non-finite values (NaN or infinity)")
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
          raise ValueError(f"float frames must be in [0, 1], {name} has values in [{low:g}, "
                           f"{high:g}] (uint8 frames go in as uint8)")
    numpy_dtype = None if isinstance(first, jax.Array) else first.dtype

    def to_model(frame):
      frame = jnp.asarray(frame, jnp.float32)
      frame = frame / 255.0 if is_uint8 else frame
      frame = frame[None] if single else frame
      return frame[..., ::-1] if self.channel_order == "BGR" else frame

    return to_model(first), to_model(second), single, is_uint8, numpy_dtype

  def __call__(self, first, second) -> np.ndarray | jax.Array:
    """The frame halfway between `first` and `second` (see the module docstring for formats)."""
    frame0, frame1, single, is_uint8, numpy_dtype = self._model_frames(first, second)
    out = self._interpolate_float(frame0, frame1)
    if self.channel_order == "BGR":
      out = out[..., ::-1]
    out = out[0] if single else out
    if is_uint8:
      return np.asarray(jnp.clip(jnp.round(out * 255.0), 0, 255).astype(jnp.uint8))
    return out if numpy_dtype is None else np.asarray(out, numpy_dtype)

  def kernel_maps(self, first, second) -> KernelMaps:
    """The network's four kernel maps for the pair (formats as for `__call__`), for inspection.

    Each map is a float32 NumPy array (H, W, K), or (B, H, W, K) for batched frames, on the frames'
    own pixel grid (padded and cropped back like the frame); index 0/1 is the frame it applies to
    (`sepconv_jax.evaluation.kernels` measures them against optical flow). The whole frame in one
    piece (no tiling, no ensemble) and the pair as given (no pre-alignment): frames the size of a
    1280x720 one need a few GB. For a network with unaligned sources, the kernels of the
    (here not pre-aligned) first pair of sources.
    """
    frame0, frame1, single, _, _ = self._model_frames(first, second)
    frame0, frame1 = network_frames(frame0, frame1, frame0, frame1,
                                    self.config.reads_captured_frames)
    maps = run_padded(functools.partial(self._kernel_network, self._state), frame0, frame1,
                      policy=self.padding, kernel_size=self.config.kernel_size)
    return KernelMaps(*(np.asarray(m[0] if single else m, np.float32) for m in maps))

  def multiply(self, first, second, factor: int = 2) -> list:
    """The `factor - 1` frames evenly spaced between `first` and `second`, in time order.

    Recursive midpoints: factor 4 interpolates the middle, then the middles of both halves.
    """
    if factor not in FACTORS:
      raise ValueError(f"factor={factor} must be one of {FACTORS}")
    middle = self(first, second)
    if factor == 2:
      return [middle]
    half = factor // 2
    return self.multiply(first, middle, half) + [middle] + self.multiply(middle, second, half)
