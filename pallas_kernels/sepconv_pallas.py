"""The separable local convolution as Pallas kernels for NVIDIA GPUs (Triton backend).

Three kernels, each named so that it can be found in a lowered program:
  `sepconv_forward`          out  (B, C, H, W)
  `sepconv_backward_maps`    d vertical and d horizontal, from one pass over the image window
  `sepconv_backward_image`   d image (every program owns its output tile: banded matrix products)
No kernel uses atomics: each program writes a disjoint tile of its outputs.

Conventions are those of `pallas_kernels.reference`. Every kernel works on one (TH, TW) tile of
pixels, TH and TW powers of two (Triton demands power-of-two array shapes), and holds what it
gathers as register tensors with a tap axis of KP = K rounded up to a power of two: a pixel's K
taps, or its K-wide image window row, in one load. The forward and map-gradient kernels walk
down the TH + K - 1 image rows their strip of TH rows reads, so that each image row, loaded
once, serves every row of the strip. Index arrays address the caller's arrays as they
are, in either map layout (BHWK, as the network emits them, or BKHW), and masks cover partial
tiles and the padded taps, so nothing is transposed, padded or cropped around the kernels.
Channels are the innermost loop, so a map load serves every channel. Loads per multiply-add:
`loads_per_multiply_add` and pallas_kernels/README.md.

What the Triton backend does not allow, and a Mosaic GPU port would: a programmable shared-memory
stage (Pallas-Triton refs are global memory, with no scratch buffers and no dynamic slices or
shifts of a loaded tile), which would also reuse image elements across columns; see README.md.
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
  """Pixels per Pallas program (tile_h rows x tile_w columns), and Triton launch settings.

  The forward and map-gradient kernels hold tile_h (tile_w, KP) tap tensors in registers (KP = K
  rounded up to a power of two): at 8 x 16 pixels and 64 taps, 64 registers per thread at 4
  warps. Taller strips cut the image loads further (each image row serves up to tile_h output
  rows) at the cost of registers. The d image kernel's matrix products need tile_h * CP and
  tile_w of at least 16 (CP: the channels rounded up to a power of two), so its tiles are
  widened to that where these are smaller.
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


def _map_at(ref, y, x, tap, *, b, layout: str):
  """A kernel map's elements at (y, x, tap), in its own layout: no transpose ever."""
  return ref.at[b, y, x, tap] if layout == "BHWK" else ref.at[b, tap, y, x]


def _gather(view, mask):
  """The elements of `view` where `mask` holds, zeros elsewhere (not loaded), as float32."""
  return plgpu.load(view, mask=mask, other=0.0).astype(_F32)


class _Strip:
  """What the forward and map-gradient kernels share: this program's strip of tile_h rows and
  tile_w columns, its masks, and the loads of its walk down the image rows it reads."""

  def __init__(self, *, k: int, height: int, width: int, tile_h: int, tile_w: int, layout: str):
    kp = pl.next_power_of_2(k)
    x0 = pl.program_id(2) * tile_w
    iota = jax.lax.broadcasted_iota
    self.b, self.y0 = pl.program_id(0), pl.program_id(1) * tile_h
    self.k, self.height, self.tile_h = k, height, tile_h
    self.xs = x0 + iota(jnp.int32, (tile_w,), 0)
    self.xs2 = x0 + iota(jnp.int32, (tile_w, kp), 0)  # (tile_w, KP): columns over the taps
    self.taps = iota(jnp.int32, (tile_w, kp), 1)
    self.cols_ok = self.xs < width
    self.window_ok = (self.xs2 < width) & (self.taps < k)
    self.rows_ok = [self.y0 + r < height for r in range(tile_h)]
    self.map_at = functools.partial(_map_at, b=self.b, layout=layout)

  def row_taps(self, map_ref) -> list:
    """Each strip row's K taps of a map, as (tile_w, KP) (zero beyond K and outside)."""
    return [_gather(self.map_at(map_ref, self.y0 + r, self.xs2, self.taps),
                    self.window_ok & self.rows_ok[r]) for r in range(self.tile_h)]

  def windows(self, image_ref, t: int, channels: int) -> list:
    """Image row y0 + t of each channel as (tile_w, KP) windows: [x, j] is column x + j."""
    inside = self.window_ok & (self.y0 + t < self.height + self.k - 1)
    return [_gather(image_ref.at[self.b, c, self.y0 + t, self.xs2 + self.taps], inside)
            for c in range(channels)]

  def vertical_tap(self, vertical_ref, r: int, t):
    """Strip row r's vertical tap for image row y0 + t (tap t - r): (values, tap index, whether
    the tap exists); the values are zero where it does not."""
    tap = t - r
    tap_ok = self.cols_ok & self.rows_ok[r] & (tap >= 0) & (tap < self.k)
    tap_index = jnp.clip(tap, 0, self.k - 1)
    return _gather(self.map_at(vertical_ref, self.y0 + r, self.xs, tap_index), tap_ok), \
        tap_index, tap_ok


def _forward_kernel(image_ref, vertical_ref, horizontal_ref, out_ref, *, k: int, channels: int,
                    height: int, width: int, tile_h: int, tile_w: int, layout: str):
  """out[c, y, x] = sum_i V[i] * sum_j image[c, y+i, x+j] * H[j], for a strip of tile_h rows
  and tile_w columns.

  Shaped for the loads, not for the loop nest of the definition. The program walks down the
  image rows its strip reads (tile_h + K - 1 of them) instead of over the taps:
    * each pixel's K horizontal taps are loaded once, as one (tile_w, KP) register tensor per
      strip row (KP = K rounded up to a power of two, the extra taps masked to zero);
    * each image row is gathered once per channel as a (tile_w, KP) window and serves every strip
      row that reads it (output row y reads image row y + i at its vertical tap i), so a loaded
      image element feeds up to tile_h row sums, reduced in registers;
    * the vertical tap of each (strip row, image row) pair is a (tile_w,) load serving all
      channels;
    * the maps are read in their own layout ("BHWK", as the network emits them, or "BKHW")
      through index arrays: no transpose, no padded copies (masks cover partial strips, and the
      image and output refs are the caller's arrays).
  A row sum whose tap falls outside 0..K-1 (the strip's first and last image rows) is computed
  and weighted by zero: tile_h - 1 of every tile_h + K - 1 image rows, 12% at K = 51, tile_h = 8.
  Global loads per multiply-add: `loads_per_multiply_add("forward", ...)`, 0.15 at K = 51.
  """
  strip = _Strip(k=k, height=height, width=width, tile_h=tile_h, tile_w=tile_w, layout=layout)
  horizontal = strip.row_taps(horizontal_ref)

  def over_image_rows(t, sums):  # image row y0 + t, read at tap t - r by strip row r
    windows = strip.windows(image_ref, t, channels)
    sums = list(sums)
    for r in range(tile_h):
      vertical, _, _ = strip.vertical_tap(vertical_ref, r, t)
      for c in range(channels):
        sums[r * channels + c] += vertical * jnp.sum(windows[c] * horizontal[r], axis=1)
    return tuple(sums)

  zeros = jnp.zeros((tile_w,), _F32)
  sums = jax.lax.fori_loop(0, k + tile_h - 1, over_image_rows, (zeros,) * (tile_h * channels))
  for r in range(tile_h):
    for c in range(channels):
      plgpu.store(out_ref.at[strip.b, c, strip.y0 + r, strip.xs],
                  sums[r * channels + c].astype(out_ref.dtype),
                  mask=strip.cols_ok & strip.rows_ok[r])


def loads_per_multiply_add(kernel: str, k: int, channels: int, design: str = "now",
                           rows: int = 8, cols: int = 16) -> float:
  """Global loads (elements, before any cache; masked lanes are not loads) per useful
  multiply-add of a kernel, counted from its structure per output pixel: `kernel` "forward",
  "backward_maps" (d vertical and d horizontal together) or "backward_image"; `design` "now"
  (this module, tiles of `rows` x `cols` pixels), "gather" (d image only: the gather form of
  2026-12-02) or "first" (until 2026-12-02: a load of each operand per tap, maps re-read for
  every channel, the two map gradients in two kernels)."""
  c, kk, span = channels, k * k, k + rows - 1  # map or image rows a strip reads
  map_cols = cols + k - 1  # map columns a d image tile reads
  counts = {  # (loads, multiply-adds) per output pixel
      # image: span rows x C windows of K per strip row; H: K; V: one per (strip row, image row)
      ("forward", "now"): (span * c * k / rows + k + span, c * k * (k + 1)),
      ("forward", "first"): (2 * c * kk + c * k, c * k * (k + 1)),
      # the same, plus g (C); every window element feeds a d vertical and a d horizontal product
      ("backward_maps", "now"): (span * c * k / rows + k + span + c, 2 * c * kk),
      ("backward_maps", "first"): (2 * (2 * c * kk + c * k), 2 * c * kk),
      # per map row: H's band (cols x K), g (C rows); V: one row per (map row, tile row) pair
      ("backward_image", "now"): ((span * (cols * k + c * map_cols) + rows * k * map_cols)
                                  / (rows * cols), c * kk),
      ("backward_image", "gather"): ((2 + c) * kk, c * kk),
      ("backward_image", "first"): (3 * c * kk, c * kk),
  }
  if (kernel, design) not in counts:
    raise ValueError(f"unknown kernel={kernel!r} or design={design!r}")
  loads, macs = counts[kernel, design]
  return loads / macs


def _backward_maps_kernel(image_ref, vertical_ref, horizontal_ref, grad_ref, d_vertical_ref,
                          d_horizontal_ref, *, k: int, channels: int, height: int, width: int,
                          tile_h: int, tile_w: int, layout: str):
  """Both kernel-map gradients of a strip, from one walk down the image rows it reads (as the
  forward kernel walks them):

    d_vertical[i]   = sum_c g[c] * sum_j image[c, y+i, x+j] * H[j]
    d_horizontal[j] = sum_c g[c] * sum_i image[c, y+i, x+j] * V[i]

  Each (tile_w, KP) window gather serves every strip row that reads its image row, for a row sum
  into d vertical (stored at that row's tap) and a multiply-add into the row's register-held
  d horizontal accumulator: `loads_per_multiply_add("backward_maps", ...)`, 0.08 at K = 51.
  """
  strip = _Strip(k=k, height=height, width=width, tile_h=tile_h, tile_w=tile_w, layout=layout)
  b, y0, xs = strip.b, strip.y0, strip.xs
  horizontal = strip.row_taps(horizontal_ref)
  grads = [[_gather(grad_ref.at[b, c, y0 + r, xs], strip.cols_ok & strip.rows_ok[r])
            for c in range(channels)] for r in range(tile_h)]

  def over_image_rows(t, d_horizontal):
    windows = strip.windows(image_ref, t, channels)
    d_horizontal = list(d_horizontal)
    for r in range(tile_h):
      vertical, tap_index, tap_ok = strip.vertical_tap(vertical_ref, r, t)
      d_vertical = jnp.zeros((tile_w,), _F32)
      for c in range(channels):
        d_vertical += grads[r][c] * jnp.sum(windows[c] * horizontal[r], axis=1)
        d_horizontal[r] += (grads[r][c] * vertical)[:, None] * windows[c]
      plgpu.store(strip.map_at(d_vertical_ref, y0 + r, xs, tap_index),
                  d_vertical.astype(d_vertical_ref.dtype), mask=tap_ok)
    return tuple(d_horizontal)

  d_horizontal = jax.lax.fori_loop(0, k + tile_h - 1, over_image_rows,
                                   (jnp.zeros(strip.xs2.shape, _F32),) * tile_h)
  for r in range(tile_h):
    plgpu.store(strip.map_at(d_horizontal_ref, y0 + r, strip.xs2, strip.taps),
                d_horizontal[r].astype(d_horizontal_ref.dtype),
                mask=strip.window_ok & strip.rows_ok[r])


def _backward_image_kernel(vertical_ref, horizontal_ref, grad_ref, d_image_ref, *, k: int,
                           channels: int, height: int, width: int, tile_h: int, tile_w: int,
                           layout: str):
  """d image of one (tile_h, tile_w) tile of the (H+K-1, W+K-1) image, without atomics:

    d_image[c, Y, X] = sum_{i,j} g[c, Y-i, X-j] * V[i, Y-i, X-j] * H[j, Y-i, X-j]

  over the pixels (Y-i, X-j) inside the (H, W) maps. The program walks the tile_h + K - 1 map
  rows y its tile's rows draw on (tile row Y reads map row y at vertical tap Y - y). For one map
  row, with the S = tile_w + K - 1 map columns x the tile reads (padded to SP, a power of two):
    * g[c, y, x] (C rows) and V[Y - y, y, x] for every tile row (tile_h rows) are plain row loads,
      and their products form a (tile_h * CP, SP) matrix (CP: C padded to a power of two);
    * H's taps are gathered once into a banded (SP, tile_w) matrix, band[x, X] = H[X - x, y, x]
      for 0 <= X - x < K, zero elsewhere (not loaded);
    * one matrix product, products @ band, adds this map row's contribution to every tile row
      and channel at once.
  Each H element is loaded once per program and serves tile_h * C multiply-adds, each V element
  C * K, each g element tile_h * K: `loads_per_multiply_add("backward_image", ...)`, 0.09 at
  K = 51 and 8 x 16 pixels (the gather form before: 1.67). The price is arithmetic: the band is
  K / SP dense and CP / C of the rows are padding, so the product does about 3.8x the useful
  multiply-adds at K = 51 (tensor-core friendly; float32 `precision=HIGHEST` here).
  """
  cp, span = pl.next_power_of_2(channels), pl.next_power_of_2(tile_w + k - 1)
  b, y0, x0 = pl.program_id(0), pl.program_id(1) * tile_h, pl.program_id(2) * tile_w
  iota = jax.lax.broadcasted_iota
  map_at = functools.partial(_map_at, b=b, layout=layout)

  def source_columns(shape, axis):
    """Map columns x0 - (K-1) + s along `axis` of `shape`, clipped, and where they are real."""
    s = iota(jnp.int32, shape, axis)
    cols = x0 - (k - 1) + s
    return jnp.clip(cols, 0, width - 1), (cols >= 0) & (cols < width) & (s < tile_w + k - 1)

  band_cols, band_cols_ok = source_columns((span, tile_w), 0)
  band_taps = iota(jnp.int32, (span, tile_w), 1) - iota(jnp.int32, (span, tile_w), 0) + k - 1
  band_ok = band_cols_ok & (band_taps >= 0) & (band_taps < k)
  band_taps = jnp.clip(band_taps, 0, k - 1)
  v_cols, v_cols_ok = source_columns((tile_h, span), 1)
  tile_rows = y0 + iota(jnp.int32, (tile_h, span), 0)
  g_cols, g_cols_ok = source_columns((cp, span), 1)
  g_channels = iota(jnp.int32, (cp, span), 0)
  g_ok = g_cols_ok & (g_channels < channels)
  g_channels = jnp.minimum(g_channels, channels - 1)

  def over_map_rows(t, acc):
    y = y0 - (k - 1) + t
    row_ok = (y >= 0) & (y < height)
    y = jnp.clip(y, 0, height - 1)
    band = _gather(map_at(horizontal_ref, y, band_cols, band_taps), band_ok & row_ok)
    taps = tile_rows - y
    v_ok = v_cols_ok & row_ok & (taps >= 0) & (taps < k)
    vertical = _gather(map_at(vertical_ref, y, v_cols, jnp.clip(taps, 0, k - 1)), v_ok)
    grad = _gather(grad_ref.at[b, g_channels, y, g_cols], g_ok & row_ok)
    products = (vertical[:, None, :] * grad[None, :, :]).reshape(tile_h * cp, span)
    return acc + jnp.dot(products, band, precision=jax.lax.Precision.HIGHEST,
                         preferred_element_type=_F32)

  acc = jax.lax.fori_loop(0, tile_h + k - 1, over_map_rows,
                          jnp.zeros((tile_h * cp, tile_w), _F32)).reshape(tile_h, cp, tile_w)
  # One channel at a time, picked out by a masked sum (Triton cannot slice a register tensor):
  # a single store through clipped channel indices would write some addresses twice.
  channel_of = iota(jnp.int32, (tile_h, cp, tile_w), 1)
  ys = y0 + iota(jnp.int32, (tile_h, tile_w), 0)
  xs = x0 + iota(jnp.int32, (tile_h, tile_w), 1)
  for c in range(channels):
    plgpu.store(d_image_ref.at[b, c, ys, xs],
                jnp.sum(jnp.where(channel_of == c, acc, 0.0), axis=1).astype(d_image_ref.dtype),
                mask=(ys < height + k - 1) & (xs < width + k - 1))


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
            interpret: bool, min_tile: tuple[int, int] = (1, 1)):
  blocks = block_sizes.fitted(*tile_over)
  blocks = dataclasses.replace(blocks, tile_h=max(blocks.tile_h, min_tile[0]),
                               tile_w=max(blocks.tile_w, min_tile[1]))
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
  # Triton's matrix products want every dimension >= 16: tile_h * CP rows, tile_w columns.
  d_image = _launch(
      _backward_image_kernel, "sepconv_backward_image", (vertical, horizontal, grad),
      jax.ShapeDtypeStruct(image.shape, image.dtype), tile_over=image.shape[2:],
      min_tile=(max(1, 16 // pl.next_power_of_2(channels)), 16), **common)
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
