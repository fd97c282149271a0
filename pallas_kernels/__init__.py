"""The custom ops of SepConv, for GPU (Pallas/Triton) and CPU (C++ and oneDNN behind jax.ffi).

The separable local convolution: `sepconv(image, vertical, horizontal)` is the public entry point;
`pallas_kernels.reference` states the conventions. Implementations, one module each:
  sepconv_pallas  Pallas kernels (Triton backend) with a custom VJP: the GPU path
  sepconv_cpu     a C++ kernel behind jax.ffi, built on first use: the fast CPU path
  sepconv_xla     plain XLA with a custom VJP: the portable fallback
  reference       vmap-based, obviously correct: the test oracle
The U-Net's convolution: `conv2d(x, kernel, bias, precision=..., impl=...)` (`pallas_kernels.conv`),
in float32 or bfloat16 (bfloat16 operands, float32 accumulation), on oneDNN behind jax.ffi
(`conv_onednn`, the fast CPU path) or XLA (every backend).
Shared: `_native` builds and caches the C++ libraries; `allocator` lets glibc keep freed memory
for the next XLA execution (the command-line tools turn it on).
This package imports nothing but jax (and the standard library).
"""

from pallas_kernels.api import IMPLEMENTATIONS, default_impl, sepconv
from pallas_kernels.conv import (CONV_IMPLEMENTATIONS, PRECISIONS, conv2d, default_conv_impl,
                                 default_precision)
from pallas_kernels.reference import sepconv_reference
from pallas_kernels.sepconv_pallas import BlockSizes

__all__ = ["CONV_IMPLEMENTATIONS", "IMPLEMENTATIONS", "PRECISIONS", "BlockSizes", "conv2d",
           "default_conv_impl", "default_impl", "default_precision", "sepconv",
           "sepconv_reference"]
