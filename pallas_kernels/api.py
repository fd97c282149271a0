"""The one public entry point of the op, `sepconv`, and the choice of implementation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels._native import warn_fallback
from pallas_kernels._shapes import check_kernel_layout, check_sepconv_shapes
from pallas_kernels.reference import sepconv_reference
from pallas_kernels.sepconv_pallas import BlockSizes, sepconv_pallas
from pallas_kernels.sepconv_xla import sepconv_xla

IMPLEMENTATIONS = ("pallas", "cpu", "xla", "reference")


@functools.cache
def _cpu_kernel():
  """The compiled C++ CPU kernel module, or None with the reason when it cannot be built."""
  from pallas_kernels import sepconv_cpu  # pylint: disable=import-outside-toplevel
  if sepconv_cpu.cpu_kernel_available():
    return sepconv_cpu, ""
  return None, sepconv_cpu.cpu_kernel_unavailable_reason()


def default_impl(backend: str | None = None) -> str:
  """The fastest implementation for a backend: Pallas on GPUs, the C++ kernel on CPUs (plain XLA,
  with one warning, where it cannot be built), plain XLA elsewhere."""
  backend = backend or jax.default_backend()
  if backend == "gpu":
    return "pallas"
  if backend == "cpu":
    module, reason = _cpu_kernel()
    if module is not None:
      return "cpu"
    warn_fallback("the C++ separable-convolution kernel", reason,
                  "the op runs on plain XLA (about 10x slower)")
  return "xla"


def sepconv(image: jax.Array, vertical: jax.Array, horizontal: jax.Array, *,
            impl: str | None = None, interpret: bool | None = None,
            backward_impl: str = "pallas", block_sizes: BlockSizes | None = None,
            kernel_layout: str = "BKHW") -> jax.Array:
  """Separable local convolution: every output pixel is its own K x K separable filter.

    out[b, c, y, x] = sum_i sum_j image[b, c, y+i, x+j] * vertical[b, i, y, x]
                                                        * horizontal[b, j, y, x]

  Args:
    image: (B, C, H+K-1, W+K-1), already padded by the caller (SepConv replicate-pads K//2).
    vertical: (B, K, H, W) per-pixel weights of image rows y..y+K-1 ((B, H, W, K) with
      kernel_layout="BHWK").
    horizontal: (B, K, H, W) per-pixel weights of image columns x..x+K-1 (likewise).
    impl: "pallas" (GPU kernels; on CPU in interpret mode), "cpu" (compiled C++ kernel behind
      jax.ffi), "xla" (portable plain XLA), "reference" (slow oracle), or None for the fastest on
      the current backend (`default_impl`).
    interpret: Pallas only. None runs the kernels in interpret mode exactly when the backend is
      CPU; False forces the GPU (Triton) lowering, e.g. to lower for "cuda" on a CPU machine.
    backward_impl: Pallas only. "pallas" (three backward kernels) or "reference" (the VJP of the
      reference, for debugging).
    block_sizes: Pallas only: the output tile per program and Triton launch settings.
    kernel_layout: "BKHW" (kernel maps (B, K, H, W), the default) or "BHWK" ((B, H, W, K), the
      layout an NHWC network emits). Gradients of the kernel maps come back in the same layout.
      The C++ kernel and the Pallas forward kernel read BHWK natively (Pallas's backward kernels
      work in BKHW and transpose around themselves); XLA and the reference transpose to BKHW
      here (the transposes and their gradients are then XLA's).

  Returns:
    (B, C, H, W) in the inputs' promoted dtype. Any float dtype is accepted; accumulation is in
    float32. Differentiable with respect to all three arguments under jit and grad, with every
    implementation.

  Raises:
    ValueError: on shapes that do not fit together (the message names them and the layout),
      non-float inputs, or an unknown `impl`/`backward_impl`/`kernel_layout`.
    RuntimeError: `impl="cpu"` was asked for and the C++ kernel could not be built (says why).
  """
  check_kernel_layout(kernel_layout)
  check_sepconv_shapes(image.shape, vertical.shape, horizontal.shape, kernel_layout)
  for name, array in (("image", image), ("vertical", vertical), ("horizontal", horizontal)):
    if not jnp.issubdtype(array.dtype, jnp.floating):
      raise ValueError(f"sepconv: {name} must be a float array, got {name}.dtype={array.dtype}")
  if backward_impl not in ("pallas", "reference"):
    raise ValueError(f"sepconv: backward_impl={backward_impl!r} must be 'pallas' or 'reference'")

  impl = default_impl() if impl is None else impl
  if impl == "cpu":
    module, reason = _cpu_kernel()
    if module is None:
      raise RuntimeError(f"sepconv: the C++ CPU kernel is unavailable ({reason}); "
                         "use impl='xla' or install a C++ compiler")
    return module.sepconv_cpu(image, vertical, horizontal, kernel_layout=kernel_layout)
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"sepconv: impl={impl!r} is not one of {IMPLEMENTATIONS} or None")
  if impl == "pallas":  # reads either layout (its forward natively)
    if interpret is None:
      interpret = jax.default_backend() == "cpu"
    return sepconv_pallas(image, vertical, horizontal, block_sizes or BlockSizes(), interpret,
                          backward_impl, kernel_layout)
  if kernel_layout == "BHWK":
    # The one place where the XLA and reference implementations meet BHWK: to BKHW and on.
    vertical, horizontal = (jnp.moveaxis(a, -1, 1) for a in (vertical, horizontal))
  if impl == "xla":
    return sepconv_xla(image, vertical, horizontal)
  return sepconv_reference(image, vertical, horizontal)
