"""The network's 2D convolution on oneDNN (the library PyTorch's CPU convolutions use), behind
`jax.ffi`, with a custom VJP: forward, input gradient and weight gradient each one oneDNN call.

Conventions (those of `pallas_kernels.conv`): x (N, H, W, Ci) NHWC, kernel (KH, KW, Ci, Co) HWIO
with odd KH and KW, "SAME" zero padding, stride 1, bias (Co); the result is float32. With
`precision="bfloat16"` the operands of each convolution (x, kernel and, in the backward pass, the
cotangent) are rounded to bfloat16 and the products accumulate in float32, which oneDNN runs on the
CPU's bfloat16 units (AVX512-BF16 dot products, AMX tiles; on other CPUs see `conv_onednn`);
results, gradients and the cotangents passed on between layers stay float32, and the bias gradient
is summed from the float32 cotangent.

oneDNN comes from PyPI (`onednn-cpu-gomp` with `onednn-devel-cpu-gomp`: the shared library and
headers installed under the environment's prefix, or a tree named by `$ONEDNN_ROOT`). The glue,
`csrc/conv_onednn.cc`, is compiled on first use and cached like the separable-convolution kernel
(`pallas_kernels._native`), keyed also by the oneDNN version.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import site
import sys
import sysconfig

import jax
import jax.numpy as jnp

from pallas_kernels._native import CSRC, NativeLibrary

__all__ = ["bfloat16_faster", "bfloat16_native", "conv_onednn", "cpu_isa", "onednn_available",
           "onednn_unavailable_reason", "onednn_version"]

_TARGETS = {
    "sepconv_jax_onednn_conv_forward": "OnednnConvForward",
    "sepconv_jax_onednn_conv_backward_data": "OnednnConvBackwardData",
    "sepconv_jax_onednn_conv_backward_weights": "OnednnConvBackwardWeights",
}
_INSTALL_HINT = "pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0"

# dnnl_cpu_isa_t masks (oneapi/dnnl/dnnl_types.h): an instruction set includes the bits of every
# level it extends, so "at least X" is `isa & X == X`.
_ISA_MASKS = {  # highest first
    "avx512_core_amx": 0xFEF,
    "avx512_core_fp16": 0x1EF,
    "avx512_core_bf16": 0xE7,
    "avx512_core_vnni": 0x67,
    "avx512_core": 0x27,
    "avx2_vnni_2": 0x1F,
    "avx2_vnni": 0xF,
    "avx2": 0x7,
    "avx": 0x3,
    "sse41": 0x1,
}


def _onednn_prefix() -> pathlib.Path:
  """The installation holding include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so*."""
  env = os.environ.get("ONEDNN_ROOT")
  candidates = [env] if env else [sys.prefix, sysconfig.get_paths()["data"], site.USER_BASE]
  for candidate in candidates:
    if not candidate:
      continue
    root = pathlib.Path(candidate)
    if ((root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file()
        and any((root / "lib").glob("libdnnl.so*"))):
      return root
  where = f"$ONEDNN_ROOT={env}" if env else f"{sys.prefix}"
  raise RuntimeError(f"oneDNN headers and library not found under {where} ({_INSTALL_HINT})")


def onednn_version(prefix: pathlib.Path | None = None) -> str:
  """The installed oneDNN's version (major.minor.patch+hash), read from its headers."""
  header = (prefix or _onednn_prefix()) / "include" / "oneapi" / "dnnl" / "dnnl_version.h"
  text = header.read_text()
  parts = [re.search(rf"#define DNNL_VERSION_{p}\s+(\d+)", text) for p in
           ("MAJOR", "MINOR", "PATCH")]
  version = ".".join(m.group(1) if m else "?" for m in parts)
  hash_header = header.with_name("dnnl_version_hash.h")
  text = hash_header.read_text() if hash_header.is_file() else text
  found = re.search(r'#define DNNL_VERSION_HASH\s+"(\w+)"', text)
  return version + (f"+{found.group(1)[:12]}" if found else "")


class _OnednnLibrary(NativeLibrary):
  """The glue library, whose flags depend on where oneDNN is (found on first use, not import)."""

  def build(self):
    prefix = _onednn_prefix()
    lib = prefix / "lib"
    self.compile_flags = ("-O2", "-fopenmp", f"-I{prefix / 'include'}")
    # -Bsymbolic: the glue's own copies of oneDNN's inline C++ wrappers bind to themselves, not to
    # another copy of oneDNN that PyTorch or TensorFlow may have loaded into the process.
    self.link_flags = ("-fopenmp", f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-Wl,-Bsymbolic")
    self.key_parts = (onednn_version(prefix), str(prefix))
    return super().build()


_LIBRARY = _OnednnLibrary("conv_onednn", CSRC / "conv_onednn.cc", _TARGETS)


def onednn_available() -> bool:
  """True when oneDNN is installed and the glue is built (or cached), loaded and registered."""
  return _LIBRARY.available()


def onednn_unavailable_reason() -> str | None:
  """Why `onednn_available()` is False, in one line; None when it is available."""
  return _LIBRARY.unavailable_reason()


@functools.cache
def cpu_isa() -> str:
  """oneDNN's name for the best instruction set it uses on this CPU (e.g. "avx512_core_amx")."""
  isa = int(_LIBRARY.require().OnednnConvCpuIsa())
  for name, mask in _ISA_MASKS.items():
    if isa & mask == mask:
      return name
  return "default"


def bfloat16_native() -> bool:
  """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16, AMX, AVX2-VNNI-2), so that
  oneDNN has bfloat16 convolutions at all (otherwise they are emulated or missing)."""
  return onednn_available() and cpu_isa() in ("avx512_core_amx", "avx512_core_fp16",
                                              "avx512_core_bf16", "avx2_vnni_2")


# Where oneDNN's bfloat16 convolutions were measured faster than its float32 ones
# (benchmarks/bench_compute.py, 2 cores; network forward at 640x512 and a `cpu`-recipe train
# step): AMX 3.3x and 1.5x; "avx512_core_bf16" (an AMD EPYC with AVX512-BF16) 1.7x and 1.3x. On an
# Intel Xeon with AVX512-BF16 and AVX512-FP16 but AMX off ("avx512_core_fp16") they were 1.7x and
# 1.5x slower: there the bfloat16 dot product has half the float32 FMA's throughput. Other
# instruction sets are unmeasured, so float32 stays their default.
_BFLOAT16_FASTER_ISAS = ("avx512_core_amx", "avx512_core_bf16")


def bfloat16_faster() -> bool:
  """Whether oneDNN's bfloat16 convolutions are faster than its float32 ones on this CPU (see
  `_BFLOAT16_FASTER_ISAS`): where bfloat16 is the default precision."""
  return onednn_available() and cpu_isa() in _BFLOAT16_FASTER_ISAS


# The share of the cores (1/n of the glue's thread budget, which keeps concurrent calls within
# them) each call asks for. A forward convolution mostly runs alone (the U-Net is a chain), so it
# takes them all. The backward pass's input and weight gradients are independent and XLA runs them
# at the same time: half each keeps the cores busy without the teams waiting on each other.
# Measured on AMX, 2 cores, bfloat16 `cpu`-recipe train step: 0.38-0.45 s with half-budget
# gradients against 0.46-0.65 s with whole-budget ones (and 0.49-2.0 s with no budget); the same
# with half-budget forwards, but those make inference 1.3x slower.
_FORWARD_SHARE = 1
_BACKWARD_SHARE = 2


def _forward_call(x, kernel, bias, relu=False, result_dtype=jnp.float32):
  out = jax.ShapeDtypeStruct(x.shape[:3] + kernel.shape[3:], result_dtype)
  return jax.ffi.ffi_call("sepconv_jax_onednn_conv_forward", out,
                          vmap_method="sequential")(x, kernel, bias, relu=int(relu),
                                                    thread_share=_FORWARD_SHARE)


def _operand(value, operand_dtype, rounded):
  """`value` as a convolution operand: cast to `operand_dtype`, or, when `rounded` (bfloat16 on a
  CPU without bfloat16 hardware), rounded to bfloat16 and kept float32. Products of bfloat16
  values are exact in float32, so a float32 convolution of rounded operands is the bfloat16
  convolution with float32 accumulation, up to summation order."""
  if rounded:
    return value.astype(jnp.bfloat16).astype(jnp.float32)
  return value.astype(operand_dtype)


def _weights(kernel, rounded):
  if rounded:
    return _operand(kernel, jnp.bfloat16, rounded)
  # float32 or bfloat16 go to oneDNN as they are: its reorder into the primitive's blocked layout
  # also rounds them to the operand dtype (the activations'), in the same pass.
  return kernel if kernel.dtype in (jnp.float32, jnp.bfloat16) else kernel.astype(jnp.float32)


def _forward(x_op, kernel_op, bias, rounded, relu, result_dtype):
  # With rounded operands the convolution is a float32 one, which writes float32 only.
  y = _forward_call(x_op, kernel_op, bias.astype(jnp.float32), relu,
                    jnp.float32 if rounded else result_dtype)
  return y.astype(result_dtype)


# Static arguments: the operand dtype, whether bfloat16 operands are rounded float32 ones (see
# `_operand`), whether ReLU follows, the result dtype and the arguments' dtypes (the gradients').
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _conv(x, kernel, bias, operand_dtype, rounded, relu, result_dtype, dtypes):
  del dtypes
  return _forward(_operand(x, operand_dtype, rounded), _weights(kernel, rounded), bias, rounded,
                  relu, result_dtype)


def _conv_fwd(x, kernel, bias, operand_dtype, rounded, relu, result_dtype, dtypes):
  del dtypes
  x_op, kernel_op = _operand(x, operand_dtype, rounded), _weights(kernel, rounded)
  y = _forward(x_op, kernel_op, bias, rounded, relu, result_dtype)
  # The rounded activations are a residual: half the memory of float32 ones in bfloat16, and the
  # weight gradient reads them in that dtype anyway. After a ReLU, y tells where it passed.
  return y, (x_op, kernel_op, y if relu else None)


def _conv_bwd(operand_dtype, rounded, relu, result_dtype, dtypes, residuals, g):
  del result_dtype
  x_op, kernel_op, y = residuals
  x_dtype, kernel_dtype, bias_dtype = dtypes
  if relu:  # ReLU's gradient, 0 where it clipped (also at 0, as jax.nn.relu's)
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
  g_op = _operand(g, operand_dtype, rounded)
  d_x = jax.ffi.ffi_call("sepconv_jax_onednn_conv_backward_data",
                         jax.ShapeDtypeStruct(x_op.shape, jnp.float32),
                         vmap_method="sequential")(g_op, kernel_op,
                                                   thread_share=_BACKWARD_SHARE)
  d_kernel = jax.ffi.ffi_call("sepconv_jax_onednn_conv_backward_weights",
                              jax.ShapeDtypeStruct(kernel_op.shape, jnp.float32),
                              vmap_method="sequential")(x_op, g_op,
                                                        thread_share=_BACKWARD_SHARE)
  d_bias = jnp.sum(g.astype(jnp.float32), axis=(0, 1, 2))
  return d_x.astype(x_dtype), d_kernel.astype(kernel_dtype), d_bias.astype(bias_dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_onednn(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                operand_dtype=jnp.float32, *, relu: bool = False,
                result_dtype=jnp.float32) -> jax.Array:
  """conv(x, kernel) + bias on oneDNN (see the module docstring), then max(., 0) if `relu` (fused
  into the convolution); (N, H, W, Co) in `result_dtype`.

  Differentiable in all three arguments (gradients in each argument's dtype). `result_dtype`
  bfloat16 needs bfloat16 operands: it writes the next convolution's operand directly, for
  forward-only use (the cotangent then comes back in bfloat16 too, and the bias gradient is
  summed from it). With bfloat16 on a CPU without bfloat16 hardware (`bfloat16_native()` False),
  the operands are rounded to bfloat16 and convolved in float32: the same values at float32
  speed, where oneDNN's own bfloat16 is emulated (slower) on AVX-512 and does not exist on AVX2
  (creating the primitive fails). Raises RuntimeError with the reason when oneDNN or the glue is
  unavailable, ValueError for a bfloat16 result of float32 operands.
  """
  _LIBRARY.require()
  operand_dtype, result_dtype = jnp.dtype(operand_dtype), jnp.dtype(result_dtype)
  if result_dtype == jnp.bfloat16 and operand_dtype != jnp.bfloat16:
    raise ValueError("conv_onednn: a bfloat16 result needs operand_dtype bfloat16")
  rounded = operand_dtype == jnp.bfloat16 and not bfloat16_native()
  dtypes = (jnp.dtype(x.dtype), jnp.dtype(kernel.dtype), jnp.dtype(bias.dtype))
  return _conv(x, kernel, bias, operand_dtype, rounded, bool(relu), result_dtype, dtypes)
