"""Plain-JAX reference of the separable local convolution: slow, obviously correct, the test oracle.

Conventions (shared by every implementation in this package):
  image       (B, C, H + K - 1, W + K - 1)  already padded by the caller (SepConv replicate-pads)
  vertical    (B, K, H, W)                  vertical[b, i, y, x] weights image row y + i
  horizontal  (B, K, H, W)                  horizontal[b, j, y, x] weights image column x + j
  output      (B, C, H, W)

  out[b, c, y, x] = sum_i sum_j image[b, c, y + i, x + j] * vertical[b, i, y, x]
                                                          * horizontal[b, j, y, x]

Accumulation is in float32 whatever the input dtype; the output has the inputs' promoted dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sepconv_reference(image: jax.Array, vertical: jax.Array, horizontal: jax.Array) -> jax.Array:
  """The op written as "one K x K patch per output pixel", differentiable by plain autodiff.

  Rows are processed one at a time (`lax.map`) and pixels of a row in parallel (`vmap`), so memory
  stays at one row of patches (W * C * K * K floats) rather than the whole frame's.
  """
  out_dtype = jnp.result_type(image, vertical, horizontal)
  num_channels = image.shape[1]
  k = vertical.shape[1]
  height, width = vertical.shape[2:]

  def one_pixel(img, v, h, y, x):
    # img (C, H+K-1, W+K-1); v, h (K,): the patch whose top-left corner is (y, x).
    patch = jax.lax.dynamic_slice(img, (0, y, x), (num_channels, k, k)).astype(jnp.float32)
    return jnp.einsum("cij,i,j->c", patch, v.astype(jnp.float32), h.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)

  def one_image(img, v, h):
    # v, h (K, H, W) -> rows first so that lax.map walks y.
    v_rows = jnp.moveaxis(v, 0, -1)  # (H, W, K)
    h_rows = jnp.moveaxis(h, 0, -1)

    def one_row(args):
      y, v_row, h_row = args  # v_row, h_row (W, K)
      return jax.vmap(one_pixel, in_axes=(None, 0, 0, None, 0))(
          img, v_row, h_row, y, jnp.arange(width))  # (W, C)

    rows = jax.lax.map(one_row, (jnp.arange(height), v_rows, h_rows))  # (H, W, C)
    return jnp.moveaxis(rows, -1, 0)  # (C, H, W)

  return jax.vmap(one_image)(image, vertical, horizontal).astype(out_dtype)
