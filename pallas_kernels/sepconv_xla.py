"""The separable local convolution in plain XLA, with a hand-written VJP: the portable CPU path.

It needs nothing but XLA, so it runs wherever jax does; the compiled C++ kernel
(`pallas_kernels.sepconv_cpu`) is faster on CPU and is preferred when it builds. Conventions are
those of `pallas_kernels.reference`.

Each function loops (`fori_loop`) over one tap axis and unrolls the other into a single fused
elementwise XLA computation, so a loop step reads each input once and writes one (B, C, H, W)
accumulator. The custom VJP matters: autodiff through these loops would store every step's
intermediates (about 3x the memory and 2.5x the time of the hand-written gradients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _horizontal_sum(rows, horizontal_i, width: int):
  """sum_j rows[..., j:j+W] * horizontal[:, j]: the K horizontal taps, unrolled into one fusion.

  rows (B, C, H, W+K-1), horizontal_i (B, K, H, W) -> (B, C, H, W)
  """
  total = None
  for j in range(horizontal_i.shape[1]):
    term = rows[..., j:j + width] * horizontal_i[:, None, j]
    total = term if total is None else total + term
  return total


def _forward(image, vertical, horizontal):
  k, height, width = vertical.shape[1:]
  batch, channels = image.shape[:2]

  def over_vertical_taps(i, acc):
    rows = jax.lax.dynamic_slice_in_dim(image, i, height, axis=2)  # (B, C, H, W+K-1)
    v_i = jax.lax.dynamic_index_in_dim(vertical, i, axis=1, keepdims=True)  # (B, 1, H, W)
    return acc + v_i * _horizontal_sum(rows, horizontal, width)

  return jax.lax.fori_loop(0, k, over_vertical_taps, jnp.zeros((batch, channels, height, width),
                                                               _F32))


def _channel_weighted_sum(grad, windows, weights, size: int):
  """sum_c grad[:, c] * _horizontal_sum(windows[:, c], weights): one row of a kernel-map gradient.

  Written channel by channel on purpose: XLA then fuses each channel's K-term sum straight into
  the channel reduction, where a reduction over a (B, C, ...) sum recomputes it per channel.
  """
  return sum(grad[:, c:c + 1] * _horizontal_sum(windows[:, c:c + 1], weights, size)
             for c in range(grad.shape[1]))


def _backward(image, vertical, horizontal, grad):
  k, height, width = vertical.shape[1:]

  # d vertical[i] = sum_c g[c] * sum_j image[c, y+i, x+j] * H[j]: one row of taps per step.
  def d_vertical_step(i, d_vertical):
    rows = jax.lax.dynamic_slice_in_dim(image, i, height, axis=2)
    value = _channel_weighted_sum(grad, rows, horizontal, width)
    return jax.lax.dynamic_update_index_in_dim(d_vertical, value, i, axis=1)

  d_vertical = jax.lax.fori_loop(0, k, d_vertical_step, jnp.zeros(vertical.shape, _F32))

  # d horizontal[j] = sum_c g[c] * sum_i image[c, y+i, x+j] * V[i]: the same on transposed arrays.
  image_t = jnp.swapaxes(image, 2, 3)
  vertical_t, grad_t = jnp.swapaxes(vertical, 2, 3), jnp.swapaxes(grad, 2, 3)

  def d_horizontal_step(j, d_horizontal_t):
    columns = jax.lax.dynamic_slice_in_dim(image_t, j, width, axis=2)  # (B, C, W, H+K-1)
    value = _channel_weighted_sum(grad_t, columns, vertical_t, height)
    return jax.lax.dynamic_update_index_in_dim(d_horizontal_t, value, j, axis=1)

  d_horizontal = jnp.swapaxes(
      jax.lax.fori_loop(0, k, d_horizontal_step, jnp.zeros(vertical_t.shape, _F32)), 2, 3)

  # d image (gather form): d_image[Y, X] = sum_{i,j} (g V_i H_j)[Y-i, X-j]. g, V and H are padded
  # by K-1 zeros on every side so that source row Y-i is padded row Y+K-1-i, always in bounds.
  image_h, image_w = image.shape[2:]
  border = ((0, 0), (0, 0), (k - 1, k - 1), (k - 1, k - 1))
  grad_p, vertical_p, horizontal_p = (jnp.pad(a, border) for a in (grad, vertical, horizontal))

  def d_image_step(i, d_image):
    start = k - 1 - i
    vertical_i = jax.lax.dynamic_index_in_dim(vertical_p, i, axis=1)  # (B, 1, ., .)
    weighted = (jax.lax.dynamic_slice_in_dim(grad_p, start, image_h, axis=2) *
                jax.lax.dynamic_slice_in_dim(vertical_i, start, image_h, axis=2))
    horizontal_rows = jax.lax.dynamic_slice_in_dim(horizontal_p, start, image_h, axis=2)
    for j in range(k):
      cols = slice(k - 1 - j, k - 1 - j + image_w)
      d_image = d_image + weighted[..., cols] * horizontal_rows[:, None, j, :, cols]
    return d_image

  d_image = jax.lax.fori_loop(0, k, d_image_step, jnp.zeros(image.shape, _F32))
  return d_image, d_vertical, d_horizontal


@jax.custom_vjp
def _sepconv_f32(image, vertical, horizontal):
  return _forward(image, vertical, horizontal)


def _sepconv_f32_fwd(image, vertical, horizontal):
  return _forward(image, vertical, horizontal), (image, vertical, horizontal)


def _sepconv_f32_bwd(residuals, grad):
  return _backward(*residuals, grad.astype(_F32))


_sepconv_f32.defvjp(_sepconv_f32_fwd, _sepconv_f32_bwd)


def sepconv_xla(image: jax.Array, vertical: jax.Array, horizontal: jax.Array) -> jax.Array:
  """Separable local convolution in plain XLA with a custom VJP; float32 inside.

  Inputs of any float dtype are computed in float32; the output has the inputs' promoted dtype and
  each gradient its argument's dtype (the casts around the float32 core see to that).
  """
  out_dtype = jnp.result_type(image, vertical, horizontal)
  out = _sepconv_f32(image.astype(_F32), vertical.astype(_F32), horizontal.astype(_F32))
  return out.astype(out_dtype)
