"""The separable local convolution on CPU: a compiled C++ kernel behind `jax.ffi`.

Conventions are those of `pallas_kernels.reference`:
  image       (B, C, H + K - 1, W + K - 1)  already padded by the caller
  vertical    (B, K, H, W)                  vertical[b, i, y, x] weights image row y + i
  horizontal  (B, K, H, W)                  horizontal[b, j, y, x] weights image column x + j
  output      (B, C, H, W)
or, with `kernel_layout="BHWK"`, vertical and horizontal (and their gradients) as (B, H, W, K),
handled natively by the kernels (no transpose in XLA).
  out[b, c, y, x] = sum_i sum_j image[b, c, y + i, x + j] * vertical[b, i, y, x]
                                                          * horizontal[b, j, y, x]

The kernels compute in float32 (other input dtypes are cast to float32 before the call); the output
has `jnp.result_type(image, vertical, horizontal)` and each gradient its argument's dtype.

The library is built on first use from `csrc/sepconv_cpu.cc` with the system C++ compiler
(`$CXX`, else `c++`, else `g++`) and cached under `$SEPCONV_JAX_CACHE` (default
`~/.cache/sepconv_jax/`; see `pallas_kernels._native`), keyed by a hash of the source, the flags,
the compiler, the CPU and the jaxlib version. `-march=native` makes the build specific to the CPU it
was made on, hence the CPU in the key. Set `SEPCONV_CPU_THREADS` to cap the number of threads a call uses (default: XLA's CPU
thread pool, one thread per core).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from pallas_kernels._native import CSRC, NativeLibrary
from pallas_kernels._shapes import KERNEL_LAYOUTS, check_kernel_layout, check_sepconv_shapes

__all__ = ["cpu_kernel_available", "cpu_kernel_unavailable_reason", "sepconv_cpu"]

_LIBRARY = NativeLibrary(
    "sepconv_cpu", CSRC / "sepconv_cpu.cc",
    targets={
        # FFI target name -> exported handler symbol.
        "sepconv_jax_cpu_forward": "SepconvCpuForward",
        "sepconv_jax_cpu_backward_image": "SepconvCpuBackwardImage",
        "sepconv_jax_cpu_backward_kernels": "SepconvCpuBackwardKernels",
    },
    compile_flags=("-O3", "-march=native", "-pthread"))


def cpu_kernel_available() -> bool:
  """True when the C++ kernels are built (or cached), loaded and registered with XLA."""
  return _LIBRARY.available()


def cpu_kernel_unavailable_reason() -> str | None:
  """Why `cpu_kernel_available()` is False (no compiler, build error, ...); None when available."""
  return _LIBRARY.unavailable_reason()


def _threads() -> int:
  value = os.environ.get("SEPCONV_CPU_THREADS", "")
  return int(value) if value.strip() else 0


def _attrs(layout: int) -> dict:
  # `kernel_layout` is static: 0 = BKHW, 1 = BHWK (the index in KERNEL_LAYOUTS).
  return {"threads": _threads(), "kernel_layout": layout}


def _forward_call(image, vertical, horizontal, layout):
  height_width = vertical.shape[1:3] if layout else vertical.shape[2:]
  out = jax.ShapeDtypeStruct(image.shape[:2] + height_width, jnp.float32)
  return jax.ffi.ffi_call("sepconv_jax_cpu_forward", out, vmap_method="sequential")(
      image, vertical, horizontal, **_attrs(layout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sepconv_f32(image, vertical, horizontal, layout):
  return _forward_call(image, vertical, horizontal, layout)


def _sepconv_f32_fwd(image, vertical, horizontal, layout):
  return _forward_call(image, vertical, horizontal, layout), (image, vertical, horizontal)


def _sepconv_f32_bwd(layout, residuals, g):
  image, vertical, horizontal = residuals
  g = g.astype(jnp.float32)
  d_image = jax.ffi.ffi_call(
      "sepconv_jax_cpu_backward_image", jax.ShapeDtypeStruct(image.shape, jnp.float32),
      vmap_method="sequential")(image, vertical, horizontal, g, **_attrs(layout))
  # The kernel-map gradients come back in the maps' own layout.
  kernel_grad = jax.ShapeDtypeStruct(vertical.shape, jnp.float32)
  d_vertical, d_horizontal = jax.ffi.ffi_call(
      "sepconv_jax_cpu_backward_kernels", (kernel_grad, kernel_grad),
      vmap_method="sequential")(image, vertical, horizontal, g, **_attrs(layout))
  return d_image, d_vertical, d_horizontal


_sepconv_f32.defvjp(_sepconv_f32_fwd, _sepconv_f32_bwd)


def sepconv_cpu(image: jax.Array, vertical: jax.Array, horizontal: jax.Array,
                kernel_layout: str = "BKHW") -> jax.Array:
  """The separable local convolution with the compiled CPU kernels (see the module docstring).

  `kernel_layout` is "BKHW" (vertical, horizontal (B, K, H, W)) or "BHWK" ((B, H, W, K)); the
  kernels read either layout directly and return the kernel-map gradients in the same layout.

  Differentiable with respect to all three arguments (`jax.custom_vjp`); works under `jax.jit` and
  `jax.grad`. Inputs are cast to float32 for the kernels, so gradients come back in each
  argument's own dtype and the output in `jnp.result_type(image, vertical, horizontal)`.
  Raises ValueError for an unknown layout or inconsistent shapes and RuntimeError when the kernels could not be built
  (`cpu_kernel_unavailable_reason()` says why).
  """
  check_sepconv_shapes(image.shape, vertical.shape, horizontal.shape, kernel_layout)
  layout = KERNEL_LAYOUTS.index(check_kernel_layout(kernel_layout))
  _LIBRARY.require()
  out_dtype = jnp.result_type(image, vertical, horizontal)
  out = _sepconv_f32(jnp.asarray(image, jnp.float32), jnp.asarray(vertical, jnp.float32),
                     jnp.asarray(horizontal, jnp.float32), layout)
  return out.astype(out_dtype)
