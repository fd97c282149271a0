"""The separable local convolution of SepConv, for GPU (Pallas/Triton) and CPU.

`sepconv(image, vertical, horizontal)` is the public entry point; `pallas_kernels.reference`
states the conventions. Implementations, one module each:
  sepconv_pallas  Pallas kernels (Triton backend) with a custom VJP: the GPU path
  sepconv_cpu     a C++ kernel behind jax.ffi, built on first use: the fast CPU path
  sepconv_xla     plain XLA with a custom VJP: the portable fallback
  reference       vmap-based, obviously correct: the test oracle
This package imports nothing but jax (and the standard library).
"""

from pallas_kernels.api import IMPLEMENTATIONS, default_impl, sepconv
from pallas_kernels.reference import sepconv_reference
from pallas_kernels.sepconv_pallas import BlockSizes

__all__ = ["IMPLEMENTATIONS", "BlockSizes", "default_impl", "sepconv", "sepconv_reference"]
