"""The separable local convolution as Pallas kernels for NVIDIA GPUs (Triton backend).

Three kernels, each named so that it can be found in a lowered program:
  `sepconv_forward`          out  (B, C, H, W)
  `sepconv_backward_maps`    d vertical and d horizontal, from one pass over the image window
  `sepconv_backward_image`   d image (gather form: every program owns its output tile)
No kernel uses atomics: each program writes a disjoint tile of its outputs.

Conventions are those of `pallas_kernels.reference`. Every kernel works on one (TH, TW) tile of
pixels, TH and TW powers of two (Triton demands power-of-two array shapes), and holds what it
gathers as (TH, TW, KP) register tensors, KP = K rounded up to a power of two: a pixel's K taps,
or its K-wide image window row, in one load. Index arrays address the caller's arrays as they
are, in either map layout (BHWK, as the network emits them, or BKHW), and masks cover partial
tiles and the padded taps, so nothing is transposed, padded or cropped around the kernels.
Channels are the innermost loop, so a map load serves every channel. Loads per multiply-add:
`loads_per_multiply_add` and pallas_kernels/README.md.

What the Triton backend does not allow, and a Mosaic GPU port would: a programmable shared-memory
stage. Pallas-Triton refs are global memory (a load is a `tt.load` through L1), there are no
scratch buffers and no register shifts or dynamic slices of a loaded tile, so the image window
cannot be staged once and read K x K times from on-chip memory; below one global load per
multiply-add (each image element is used K*K times) needs that stage, see README.md.

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
  """Tile of output pixels per Pallas program, and Triton launch settings.

  Every kernel holds a (tile_h, tile_w, KP) register tensor per operand it gathers (KP = K rounded
  up to a power of two): 8 x 16 pixels x 64 taps is 64 registers per thread at 4 warps.
  """

  tile_h: int = 8
  tile_w: int = 16
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


# --------------------------------------------------------------------------------------------
# Kernels. Refs hold whole arrays in global memory; each program reads the tiles it needs.
# --------------------------------------------------------------------------------------------


def _tile_indices(k: int, tile_h: int, tile_w: int):
  """This program's batch index and its tile's pixel coordinates: (tile_h, tile_w) rows and
  columns, and the same broadcast over KP = next_power_of_2(K) taps, with the tap index."""
  shape3 = (tile_h, tile_w, pl.next_power_of_2(k))
  y0, x0 = pl.program_id(1) * tile_h, pl.program_id(2) * tile_w
  iota = jax.lax.broadcasted_iota
  return (pl.program_id(0),
          y0 + iota(jnp.int32, (tile_h, tile_w), 0), x0 + iota(jnp.int32, (tile_h, tile_w), 1),
          y0 + iota(jnp.int32, shape3, 0), x0 + iota(jnp.int32, shape3, 1),
          iota(jnp.int32, shape3, 2))


def _map_at(ref, y, x, tap, *, b, layout: str):
  """A kernel map's elements at (y, x, tap), in its own layout: no transpose ever."""
  return ref.at[b, y, x, tap] if layout == "BHWK" else ref.at[b, tap, y, x]


def _gather(view, mask):
  """The elements of `view` where `mask` holds, zeros elsewhere (not loaded), as float32."""
  return plgpu.load(view, mask=mask, other=0.0).astype(_F32)


def _forward_kernel(image_ref, vertical_ref, horizontal_ref, out_ref, *, k: int, channels: int,
                    height: int, width: int, tile_h: int, tile_w: int, layout: str):
  """out[c, y, x] = sum_i V[i] * sum_j image[c, y+i, x+j] * H[j], for one (tile_h, tile_w) tile.

  Shaped for the loads, not for the loop nest of the definition:
    * each pixel's K horizontal taps are loaded once, as a (tile_h, tile_w, KP) register tensor
      (KP = K rounded up to a power of two, the extra taps masked to zero), not once per
      channel and vertical tap (C*K = 153 times at K = 51, C = 3);
    * per vertical tap, one (tile_h, tile_w, KP) gather of the image window row serves a whole
      row sum, reduced in registers; channels are the innermost loop, so V[i] is loaded once
      for all of them;
    * the maps are read in their own layout ("BHWK", as the network emits them, or "BKHW")
      through index arrays: no transpose, no padded copies (masks cover partial tiles, and the
      image and output refs are the caller's arrays).
  Global loads per multiply-add: C*K*K image + 2*K map loads per pixel for C*K*(K+1) multiply-
  adds, about 0.99 (the previous design: 2 per multiply-add, each image load paired with a tap
  load); see `loads_per_multiply_add`.
  """
  b, ys, xs, ys3, xs3, taps = _tile_indices(k, tile_h, tile_w)
  inside = (ys < height) & (xs < width)
  valid = (ys3 < height) & (xs3 < width) & (taps < k)
  map_at = functools.partial(_map_at, b=b, layout=layout)
  horizontal = _gather(map_at(horizontal_ref, ys3, xs3, taps), valid)

  def over_vertical_taps(i, sums):
    vertical = _gather(map_at(vertical_ref, ys, xs, i), inside)
    new_sums = []
    for c in range(channels):  # innermost: one vertical tap load serves every channel
      window = _gather(image_ref.at[b, c, ys3 + i, xs3 + taps], valid)
      new_sums.append(sums[c] + vertical * jnp.sum(window * horizontal, axis=2))
    return tuple(new_sums)

  zeros = jnp.zeros((tile_h, tile_w), _F32)
  sums = jax.lax.fori_loop(0, k, over_vertical_taps, (zeros,) * channels)
  for c in range(channels):
    plgpu.store(out_ref.at[b, c, ys, xs], sums[c].astype(out_ref.dtype), mask=inside)


def loads_per_multiply_add(kernel: str, k: int, channels: int, design: str = "now") -> float:
  """Global loads (elements, before any cache) per multiply-add of a kernel, counted from its
  structure per output pixel: `kernel` "forward", "backward_maps" (d vertical and d horizontal
  together) or "backward_image"; `design` "now" (this module) or "first" (until 2026-12-02: a
  load of each operand per tap, maps re-read for every channel, the two map gradients in two
  kernels)."""
  c, kk = channels, k * k
  counts = {  # (loads, multiply-adds) per output pixel
      ("forward", "now"): (c * kk + 2 * k, c * k * (k + 1)),
      ("forward", "first"): (2 * c * kk + c * k, c * k * (k + 1)),
      ("backward_maps", "now"): (c * kk + 2 * k + c, 2 * c * kk),
      ("backward_maps", "first"): (2 * (2 * c * kk + c * k), 2 * c * kk),
      ("backward_image", "now"): ((2 + c) * kk, c * kk),
      ("backward_image", "first"): (3 * c * kk, c * kk),
  }
  if (kernel, design) not in counts:
    raise ValueError(f"unknown kernel={kernel!r} or design={design!r}")
  loads, macs = counts[kernel, design]
  return loads / macs


def _backward_maps_kernel(image_ref, vertical_ref, horizontal_ref, grad_ref, d_vertical_ref,
                          d_horizontal_ref, *, k: int, channels: int, height: int, width: int,
                          tile_h: int, tile_w: int, layout: str):
  """Both kernel-map gradients of one tile, from one pass over the image window:

    d_vertical[i]   = sum_c g[c] * sum_j image[c, y+i, x+j] * H[j]
    d_horizontal[j] = sum_c g[c] * sum_i image[c, y+i, x+j] * V[i]

  Each (tile_h, tile_w, KP) window gather (one per vertical tap and channel) feeds a row sum for
  d vertical and a multiply-add into the register-held d horizontal accumulator, so a loaded image
  element serves two multiply-adds: about 0.5 global loads per multiply-add.
  """
  b, ys, xs, ys3, xs3, taps = _tile_indices(k, tile_h, tile_w)
  inside = (ys < height) & (xs < width)
  valid = (ys3 < height) & (xs3 < width) & (taps < k)
  map_at = functools.partial(_map_at, b=b, layout=layout)
  horizontal = _gather(map_at(horizontal_ref, ys3, xs3, taps), valid)
  grads = [_gather(grad_ref.at[b, c, ys, xs], inside) for c in range(channels)]

  def over_vertical_taps(i, d_horizontal):
    vertical = _gather(map_at(vertical_ref, ys, xs, i), inside)
    d_vertical = jnp.zeros((tile_h, tile_w), _F32)
    for c in range(channels):
      window = _gather(image_ref.at[b, c, ys3 + i, xs3 + taps], valid)
      d_vertical += grads[c] * jnp.sum(window * horizontal, axis=2)
      d_horizontal += (grads[c] * vertical)[:, :, None] * window
    plgpu.store(map_at(d_vertical_ref, ys, xs, i), d_vertical.astype(d_vertical_ref.dtype),
                mask=inside)
    return d_horizontal

  d_horizontal = jax.lax.fori_loop(0, k, over_vertical_taps, jnp.zeros(ys3.shape, _F32))
  plgpu.store(map_at(d_horizontal_ref, ys3, xs3, taps),
              d_horizontal.astype(d_horizontal_ref.dtype), mask=valid)


def _backward_image_kernel(vertical_ref, horizontal_ref, grad_ref, d_image_ref, *, k: int,
                           channels: int, height: int, width: int, tile_h: int, tile_w: int,
                           layout: str):
  """d image of one tile of the (H+K-1, W+K-1) image, in gather form (no atomics):

    d_image[c, Y, X] = sum_{i,j} g[c, Y-i, X-j] * V[i, Y-i, X-j] * H[j, Y-i, X-j]

  over the pixels (Y-i, X-j) inside the (H, W) maps. Per vertical tap i, the (tile_h, tile_w, KP)
  gathers of V, H and each channel's g at those pixels: (2 + C) / C global loads per multiply-add
  (the first design: 3, and operands padded by K-1 rows and columns first).
  """
  b, ys, xs, ys3, xs3, taps = _tile_indices(k, tile_h, tile_w)
  cols = xs3 - taps
  cols_ok = (cols >= 0) & (cols < width) & (taps < k)
  cols = jnp.clip(cols, 0, width - 1)  # masked lanes are not loaded; keep their address sane
  map_at = functools.partial(_map_at, b=b, layout=layout)

  def over_vertical_taps(i, sums):
    rows = ys3 - i
    ok = cols_ok & (rows >= 0) & (rows < height)
    rows = jnp.clip(rows, 0, height - 1)
    weight = (_gather(map_at(vertical_ref, rows, cols, i), ok)
              * _gather(map_at(horizontal_ref, rows, cols, taps), ok))
    return tuple(sums[c] + jnp.sum(_gather(grad_ref.at[b, c, rows, cols], ok) * weight, axis=2)
                 for c in range(channels))

  zeros = jnp.zeros(ys3.shape[:2], _F32)
  sums = jax.lax.fori_loop(0, k, over_vertical_taps, (zeros,) * channels)
  image_h, image_w = height + k - 1, width + k - 1
  for c in range(channels):
    plgpu.store(d_image_ref.at[b, c, ys, xs], sums[c].astype(d_image_ref.dtype),
                mask=(ys < image_h) & (xs < image_w))


# --------------------------------------------------------------------------------------------
# pallas_call wrappers: one program per (batch, tile row, tile column), the arrays as they are.
# --------------------------------------------------------------------------------------------


def _map_dims(kernel_map: jax.Array, layout: str) -> tuple[int, int, int]:
  """(K, H, W) of a kernel map in `layout`."""
  if layout == "BHWK":
    return kernel_map.shape[3], kernel_map.shape[1], kernel_map.shape[2]
  return kernel_map.shape[1:]


def _launch(kernel, name: str, inputs, out_shape, *, tile_over: tuple[int, int], k: int,
            channels: int, height: int, width: int, layout: str, block_sizes: BlockSizes,
            interpret: bool):
  blocks = block_sizes.fitted(*tile_over)
  return pl.pallas_call(
      functools.partial(kernel, k=k, channels=channels, height=height, width=width,
                        tile_h=blocks.tile_h, tile_w=blocks.tile_w, layout=layout),
      out_shape=out_shape,
      grid=(inputs[0].shape[0], pl.cdiv(tile_over[0], blocks.tile_h),
            pl.cdiv(tile_over[1], blocks.tile_w)),
      compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps,
                                           num_stages=blocks.num_stages),
      interpret=interpret,
      name=name,
  )(*inputs)


def _forward(image, vertical, horizontal, *, block_sizes: BlockSizes, interpret: bool,
             layout: str):
  batch, channels = image.shape[:2]
  k, height, width = _map_dims(vertical, layout)
  out = jax.ShapeDtypeStruct((batch, channels, height, width),
                             jnp.result_type(image, vertical, horizontal))
  return _launch(_forward_kernel, "sepconv_forward", (image, vertical, horizontal), out,
                 tile_over=(height, width), k=k, channels=channels, height=height, width=width,
                 layout=layout, block_sizes=block_sizes, interpret=interpret)


def _backward(image, vertical, horizontal, grad, *, block_sizes: BlockSizes, interpret: bool,
              layout: str):
  channels = image.shape[1]
  k, height, width = _map_dims(vertical, layout)
  common = dict(k=k, channels=channels, height=height, width=width, layout=layout,
                block_sizes=block_sizes, interpret=interpret)
  d_vertical, d_horizontal = _launch(
      _backward_maps_kernel, "sepconv_backward_maps", (image, vertical, horizontal, grad),
      (jax.ShapeDtypeStruct(vertical.shape, vertical.dtype),
       jax.ShapeDtypeStruct(horizontal.shape, horizontal.dtype)),
      tile_over=(height, width), **common)
  d_image = _launch(
      _backward_image_kernel, "sepconv_backward_image", (vertical, horizontal, grad),
      jax.ShapeDtypeStruct(image.shape, image.dtype), tile_over=image.shape[2:], **common)
  return d_image, d_vertical, d_horizontal


# --------------------------------------------------------------------------------------------
# The differentiable op.
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def sepconv_pallas(image, vertical, horizontal, block_sizes: BlockSizes = BlockSizes(),
                   interpret: bool = False, backward_impl: str = "pallas",
                   kernel_layout: str = "BKHW"):
  """Separable local convolution with Pallas forward and backward kernels.

  Args: see `pallas_kernels.reference` for shapes; `block_sizes` the output tiles per program;
  `interpret` runs the kernels as XLA loops (CPU tests); `backward_impl` is "pallas" (the three
  backward kernels) or "reference" (the VJP of the plain-JAX reference, a debugging fallback);
  `kernel_layout` "BKHW" or "BHWK" (the maps' layout, which every kernel reads and writes
  natively).
  Shapes are assumed valid (the public `pallas_kernels.sepconv` checks them).
  """
  del backward_impl
  return _forward(image, vertical, horizontal, block_sizes=block_sizes, interpret=interpret,
                  layout=kernel_layout)


def _sepconv_pallas_fwd(image, vertical, horizontal, block_sizes, interpret, backward_impl,
                        kernel_layout):
  out = sepconv_pallas(image, vertical, horizontal, block_sizes, interpret, backward_impl,
                       kernel_layout)
  return out, (image, vertical, horizontal)


def _sepconv_pallas_bwd(block_sizes, interpret, backward_impl, kernel_layout, residuals, grad):
  image, vertical, horizontal = residuals
  if backward_impl == "pallas":
    return _backward(image, vertical, horizontal, grad, block_sizes=block_sizes,
                     interpret=interpret, layout=kernel_layout)
  if backward_impl != "reference":
    raise ValueError(f"backward_impl={backward_impl!r} must be 'pallas' or 'reference'")
  reference = sepconv_reference
  if kernel_layout == "BHWK":
    reference = lambda a, v, h: sepconv_reference(a, *(jnp.moveaxis(m, -1, 1) for m in (v, h)))
  _, vjp = jax.vjp(reference, image, vertical, horizontal)
  return vjp(grad)


sepconv_pallas.defvjp(_sepconv_pallas_fwd, _sepconv_pallas_bwd)
