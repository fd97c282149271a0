"""The separable local convolution as Pallas kernels for NVIDIA GPUs (Triton backend).

Four kernels, each named so that it can be found in a lowered program:
  `sepconv_forward`               out  (B, C, H, W)
  `sepconv_backward_image`        d image      (gather form: every program owns its output tile)
  `sepconv_backward_vertical`     d vertical
  `sepconv_backward_horizontal`   d horizontal
No kernel uses atomics: each program writes a disjoint tile of its output.

Conventions are those of `pallas_kernels.reference`. Every kernel works on one (TH, TW) tile of
output pixels, with TH and TW powers of two because Triton demands power-of-two array shapes; the
taps (K) and channels (C) are loop counts, never array dimensions. Sizes that the tiles do not
divide are zero-padded by the wrapper and cropped afterwards, so callers see any size.

The Triton backend of Pallas is deprecated from jax 0.11 in favour of Mosaic GPU; the backend
choice is kept inside this module so that a port touches nothing else.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.reference import sepconv_reference

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile of output pixels per Pallas program, and Triton launch settings."""

  tile_h: int = 16
  tile_w: int = 32
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    for name in ("tile_h", "tile_w"):
      value = getattr(self, name)
      if value < 1 or value & (value - 1):
        raise ValueError(f"BlockSizes.{name}={value} must be a power of two (Triton requirement)")

  def fitted(self, height: int, width: int) -> BlockSizes:
    """Shrinks the tile to the image so that tiny inputs do not pay for a mostly padded tile."""
    return dataclasses.replace(self, tile_h=min(self.tile_h, pl.next_power_of_2(height)),
                               tile_w=min(self.tile_w, pl.next_power_of_2(width)))


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _pad_bottom_right(array: jax.Array, height: int, width: int) -> jax.Array:
  """Zero-pads the last two axes of `array` at the bottom/right up to (height, width)."""
  pads = [(0, 0)] * (array.ndim - 2) + [(0, height - array.shape[-2]), (0, width - array.shape[-1])]
  return jnp.pad(array, pads)


# --------------------------------------------------------------------------------------------
# Kernels. Refs hold whole arrays in global memory; each program reads the tiles it needs.
# --------------------------------------------------------------------------------------------


def _tile_origin(tile_h: int, tile_w: int):
  batch = pl.program_id(0)
  y0 = pl.program_id(1) * tile_h
  x0 = pl.program_id(2) * tile_w
  return batch, y0, x0


def _window_line_sum(image_ref, weights_ref, b, c, y0: int, x0: int, tap, *, along_row: bool,
                     k: int, tile_h: int, tile_w: int):
  """One line of every pixel's K x K window, weighted by a per-pixel 1-D kernel map.

  along_row:     sum_j image[c, y+tap, x+j] * weights[j, y, x]   (weights = horizontal)
  not along_row: sum_i image[c, y+i, x+tap] * weights[i, y, x]   (weights = vertical)
  The forward pass and both kernel-map gradients are built from this sum.
  """
  rows, cols = pl.ds(y0, tile_h), pl.ds(x0, tile_w)

  def over_taps(s, total):
    dy, dx = (tap, s) if along_row else (s, tap)
    pixels = image_ref[b, c, pl.ds(y0 + dy, tile_h), pl.ds(x0 + dx, tile_w)].astype(_F32)
    return total + pixels * weights_ref[b, s, rows, cols].astype(_F32)

  return jax.lax.fori_loop(0, k, over_taps, jnp.zeros((tile_h, tile_w), _F32))


def _forward_kernel(image_ref, vertical_ref, horizontal_ref, out_ref, *, k: int, channels: int,
                    tile_h: int, tile_w: int):
  b, y0, x0 = _tile_origin(tile_h, tile_w)
  rows, cols = pl.ds(y0, tile_h), pl.ds(x0, tile_w)
  zeros = jnp.zeros((tile_h, tile_w), _F32)

  @pl.loop(0, channels)
  def _(c):
    def over_vertical_taps(i, acc):
      row_sum = _window_line_sum(image_ref, horizontal_ref, b, c, y0, x0, i, along_row=True,
                                 k=k, tile_h=tile_h, tile_w=tile_w)
      return acc + vertical_ref[b, i, rows, cols].astype(_F32) * row_sum

    out = jax.lax.fori_loop(0, k, over_vertical_taps, zeros)
    out_ref[b, c, rows, cols] = out.astype(out_ref.dtype)


def _backward_image_kernel(grad_ref, vertical_ref, horizontal_ref, d_image_ref, *, k: int,
                           channels: int, tile_h: int, tile_w: int):
  # d_image[Y, X] = sum_{i,j} g[Y-i, X-j] * V[i, Y-i, X-j] * H[j, Y-i, X-j]. The wrapper pads g, V
  # and H by K-1 zeros at the top/left, so row Y-i of the original is row Y+K-1-i here and every
  # read is in bounds; the zeros make out-of-range terms vanish.
  b, y0, x0 = _tile_origin(tile_h, tile_w)
  zeros = jnp.zeros((tile_h, tile_w), _F32)

  @pl.loop(0, channels)
  def _(c):
    def over_vertical_taps(i, acc):
      rows = pl.ds(y0 + k - 1 - i, tile_h)

      def over_horizontal_taps(j, acc):
        cols = pl.ds(x0 + k - 1 - j, tile_w)
        weight = (vertical_ref[b, i, rows, cols].astype(_F32) *
                  horizontal_ref[b, j, rows, cols].astype(_F32))
        return acc + grad_ref[b, c, rows, cols].astype(_F32) * weight

      return jax.lax.fori_loop(0, k, over_horizontal_taps, acc)

    d_image = jax.lax.fori_loop(0, k, over_vertical_taps, zeros)
    d_image_ref[b, c, pl.ds(y0, tile_h), pl.ds(x0, tile_w)] = d_image.astype(d_image_ref.dtype)


def _backward_kernel_map_kernel(image_ref, other_map_ref, grad_ref, d_map_ref, *, k: int,
                                channels: int, tile_h: int, tile_w: int, vertical: bool):
  """d vertical (vertical=True) or d horizontal: the two are mirror images of each other.

    d_vertical[i]   = sum_c g[c] * sum_j image[c, y+i, x+j] * H[j]   (other map: horizontal)
    d_horizontal[j] = sum_c g[c] * sum_i image[c, y+i, x+j] * V[i]   (other map: vertical)
  """
  b, y0, x0 = _tile_origin(tile_h, tile_w)
  rows, cols = pl.ds(y0, tile_h), pl.ds(x0, tile_w)
  zeros = jnp.zeros((tile_h, tile_w), _F32)

  @pl.loop(0, k)
  def _(tap):  # the output map's tap
    def over_channels(c, acc):
      total = _window_line_sum(image_ref, other_map_ref, b, c, y0, x0, tap, along_row=vertical,
                               k=k, tile_h=tile_h, tile_w=tile_w)
      return acc + grad_ref[b, c, rows, cols].astype(_F32) * total

    d_map = jax.lax.fori_loop(0, channels, over_channels, zeros)
    d_map_ref[b, tap, rows, cols] = d_map.astype(d_map_ref.dtype)


# --------------------------------------------------------------------------------------------
# pallas_call wrappers: pad to whole tiles, launch one program per (batch, tile row, tile column).
# --------------------------------------------------------------------------------------------


def _launch(kernel, name: str, inputs, out_shape: jax.ShapeDtypeStruct, *, k: int, channels: int,
            block_sizes: BlockSizes, interpret: bool):
  batch, _, out_h, out_w = out_shape.shape
  grid = (batch, out_h // block_sizes.tile_h, out_w // block_sizes.tile_w)
  return pl.pallas_call(
      functools.partial(kernel, k=k, channels=channels, tile_h=block_sizes.tile_h,
                        tile_w=block_sizes.tile_w),
      out_shape=out_shape,
      grid=grid,
      compiler_params=plgpu.CompilerParams(num_warps=block_sizes.num_warps,
                                           num_stages=block_sizes.num_stages),
      interpret=interpret,
      name=name,
  )(*inputs)


def _padded_operands(image, vertical, horizontal, block_sizes: BlockSizes):
  """Zero-pads the kernel maps to whole tiles and the image to match."""
  k, height, width = vertical.shape[1:]
  padded_h = _round_up(height, block_sizes.tile_h)
  padded_w = _round_up(width, block_sizes.tile_w)
  return (_pad_bottom_right(image, padded_h + k - 1, padded_w + k - 1),
          _pad_bottom_right(vertical, padded_h, padded_w),
          _pad_bottom_right(horizontal, padded_h, padded_w))


def _forward(image, vertical, horizontal, *, block_sizes: BlockSizes, interpret: bool):
  batch, channels, _, _ = image.shape
  k, height, width = vertical.shape[1:]
  block_sizes = block_sizes.fitted(height, width)
  image_p, vertical_p, horizontal_p = _padded_operands(image, vertical, horizontal, block_sizes)
  out_dtype = jnp.result_type(image, vertical, horizontal)
  out = _launch(_forward_kernel, "sepconv_forward", (image_p, vertical_p, horizontal_p),
                jax.ShapeDtypeStruct((batch, channels) + vertical_p.shape[2:], out_dtype),
                k=k, channels=channels, block_sizes=block_sizes, interpret=interpret)
  return out[:, :, :height, :width]


def _backward(image, vertical, horizontal, grad, *, block_sizes: BlockSizes, interpret: bool):
  batch, channels, image_h, image_w = image.shape
  k, height, width = vertical.shape[1:]

  # d vertical and d horizontal: tiles over the kernel maps' (H, W).
  kernel_blocks = block_sizes.fitted(height, width)
  image_p, vertical_p, horizontal_p = _padded_operands(image, vertical, horizontal, kernel_blocks)
  grad_p = _pad_bottom_right(grad, *vertical_p.shape[2:])
  common = dict(k=k, channels=channels, block_sizes=kernel_blocks, interpret=interpret)
  d_vertical = _launch(functools.partial(_backward_kernel_map_kernel, vertical=True),
                       "sepconv_backward_vertical",
                       (image_p, horizontal_p, grad_p),
                       jax.ShapeDtypeStruct(vertical_p.shape, vertical.dtype), **common)
  d_horizontal = _launch(functools.partial(_backward_kernel_map_kernel, vertical=False),
                         "sepconv_backward_horizontal",
                         (image_p, vertical_p, grad_p),
                         jax.ShapeDtypeStruct(horizontal_p.shape, horizontal.dtype), **common)

  # d image: tiles over the padded image's (H+K-1, W+K-1); g, V, H get K-1 zeros above/left.
  image_blocks = block_sizes.fitted(image_h, image_w)
  out_h = _round_up(image_h, image_blocks.tile_h)
  out_w = _round_up(image_w, image_blocks.tile_w)

  def shifted(array):
    pads = ((0, 0), (0, 0), (k - 1, out_h - height), (k - 1, out_w - width))
    return jnp.pad(array, pads)

  d_image = _launch(_backward_image_kernel, "sepconv_backward_image",
                    (shifted(grad), shifted(vertical), shifted(horizontal)),
                    jax.ShapeDtypeStruct((batch, channels, out_h, out_w), image.dtype),
                    k=k, channels=channels, block_sizes=image_blocks, interpret=interpret)
  return (d_image[:, :, :image_h, :image_w], d_vertical[:, :, :height, :width],
          d_horizontal[:, :, :height, :width])


# --------------------------------------------------------------------------------------------
# The differentiable op.
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def sepconv_pallas(image, vertical, horizontal, block_sizes: BlockSizes = BlockSizes(),
                   interpret: bool = False, backward_impl: str = "pallas"):
  """Separable local convolution with Pallas forward and backward kernels.

  Args: see `pallas_kernels.reference` for shapes; `block_sizes` the output tile per program;
  `interpret` runs the kernels as XLA loops (CPU tests); `backward_impl` is "pallas" (the three
  backward kernels) or "reference" (the VJP of the plain-JAX reference, a debugging fallback).
  Shapes are assumed valid (the public `pallas_kernels.sepconv` checks them).
  """
  del backward_impl
  return _forward(image, vertical, horizontal, block_sizes=block_sizes, interpret=interpret)


def _sepconv_pallas_fwd(image, vertical, horizontal, block_sizes, interpret, backward_impl):
  out = sepconv_pallas(image, vertical, horizontal, block_sizes, interpret, backward_impl)
  return out, (image, vertical, horizontal)


def _sepconv_pallas_bwd(block_sizes, interpret, backward_impl, residuals, grad):
  image, vertical, horizontal = residuals
  if backward_impl == "reference":
    _, vjp = jax.vjp(sepconv_reference, image, vertical, horizontal)
    return vjp(grad)
  if backward_impl != "pallas":
    raise ValueError(f"backward_impl={backward_impl!r} must be 'pallas' or 'reference'")
  return _backward(image, vertical, horizontal, grad, block_sizes=block_sizes, interpret=interpret)


sepconv_pallas.defvjp(_sepconv_pallas_fwd, _sepconv_pallas_bwd)
