"""The network's 2D convolution, with a choice of compute precision and implementation.

`conv2d(x, kernel, bias, precision=..., impl=..., relu=..., result_dtype=...)` is what every
convolution of the SepConv U-Net calls. Conventions:
  x        (N, H, W, Ci)     NHWC, any float dtype
  kernel   (KH, KW, Ci, Co)  HWIO (Flax's layout), KH and KW odd
  bias     (Co,)
  result   (N, H, W, Co)     conv(x, kernel) with "SAME" zero padding, stride 1, + bias, then
                             max(., 0) with relu=True (fused into oneDNN's convolution); float32,
                             or bfloat16 with bfloat16 precision for a result that only feeds the
                             next convolution in a forward-only run (its operand, rounded once
                             and written at half the bytes)

Precisions:
  float32   float32 operands and accumulation: the reference.
  bfloat16  each convolution's operands (activations, weights and, for the gradients, the
            cotangent) rounded to bfloat16, products accumulated in float32. Results, gradients
            and everything between the convolutions stay float32, so parameters, optimizer state
            and checkpoints do not change. This is the format of the CPU's bfloat16 matrix units
            (AMX, AVX512-BF16) and of GPU tensor cores; the default on CPUs where it is measured
            faster than float32 (`default_precision`).

Implementations:
  onednn    oneDNN behind jax.ffi (`pallas_kernels.conv_onednn`): the fast CPU path, float32 and
            bfloat16 forward, input gradient and weight gradient.
  xla       `lax.conv_general_dilated` (float32 through autodiff; bfloat16 through a custom VJP
            whose three convolutions take bfloat16 operands and return float32, which plain
            autodiff of a mixed-precision convolution does not do). Every backend; on GPUs XLA
            hands it to cuDNN.
`default_conv_impl()` picks oneDNN on CPUs where it can be built and XLA elsewhere; when the CPU
path falls back to XLA it says so once (a RuntimeWarning naming the reason).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import conv_onednn
from pallas_kernels._native import warn_fallback

PRECISIONS = ("float32", "bfloat16")
CONV_IMPLEMENTATIONS = ("onednn", "xla")

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# XLA:CPU's option that routes convolutions to YNNPACK (on by default in this jaxlib). Emptying it
# leaves float32 convolutions to Eigen, which is 1.3-5x faster at the U-Net's shapes on the
# project's AVX-512 machines, but 1.2x slower in all on an AVX2-only one (YNNPACK's full-resolution
# layers up to 2.6x faster there; benchmarks/bench_compute.py --parts layers); see
# `xla_compiler_options`.
_YNNPACK_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def cpu_has_avx512() -> bool:
  """Whether the CPU has AVX-512 (Linux's /proc/cpuinfo flags; False where that is unreadable)."""
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
      return any(line.startswith("flags") and " avx512f" in line for line in cpuinfo)
  except OSError:
    return False


def check_precision(precision) -> str:
  """Returns `precision` if it is one of PRECISIONS, else raises ValueError naming them."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
  return precision


def default_conv_impl(backend: str | None = None) -> str:
  """oneDNN on CPUs where it is installed and its glue builds; XLA elsewhere (with one warning
  when a CPU falls back)."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "xla"
  if conv_onednn.onednn_available():
    return "onednn"
  warn_fallback("the oneDNN convolution", conv_onednn.onednn_unavailable_reason(),
                "the network's convolutions run on XLA (2-5x slower on CPU)")
  return "xla"


def default_precision(backend: str | None = None) -> str:
  """The faster of the two precisions where it is accurate: bfloat16 on CPUs where oneDNN's
  bfloat16 convolutions were measured faster (AMX; AVX512-BF16 on AMD: `bfloat16_faster`),
  float32 elsewhere (including GPUs, until measured there: XLA already runs float32 convolutions
  on tensor cores in TF32 by default)."""
  backend = backend or jax.default_backend()
  if backend == "cpu" and conv_onednn.bfloat16_faster():
    return "bfloat16"
  return "float32"


def describe(impl: str | None = None, precision: str | None = None) -> str:
  """One line on the convolution path, for summaries: e.g. "oneDNN 3.2.0 (avx512_core_bf16),
  bfloat16", or "XLA (cpu), oneDNN unavailable: <why>, float32"."""
  impl = impl or default_conv_impl()
  precision = precision or default_precision()
  if impl == "onednn":
    name = f"oneDNN {conv_onednn.onednn_version().split('+')[0]} ({conv_onednn.cpu_isa()})"
  else:
    name = f"XLA ({jax.default_backend()})"
    if jax.default_backend() == "cpu" and not conv_onednn.onednn_available():
      name += f", oneDNN unavailable: {conv_onednn.onednn_unavailable_reason()}"
  return f"{name}, {precision}"


def xla_compiler_options(impl: str | None = None, precision: str | None = None,
                         backend: str | None = None) -> dict[str, str]:
  """Per-computation XLA options that make the network faster: with float32 convolutions on
  XLA:CPU and an AVX-512 CPU, YNNPACK off (Eigen's convolutions are faster there, not on AVX2);
  nothing otherwise. Pass the result as `jax.jit(..., compiler_options=...)`; the user's
  XLA_FLAGS are left alone."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return {}
  impl = impl or default_conv_impl(backend)
  precision = precision or default_precision(backend)
  # With bfloat16 on XLA, YNNPACK is what reaches the matrix units (bf16 dots): leave it on.
  eigen_faster = impl == "xla" and precision == "float32" and cpu_has_avx512()
  return dict(_YNNPACK_OFF) if eigen_faster else {}


def _check_shapes(x, kernel, bias) -> None:
  if x.ndim != 4 or kernel.ndim != 4 or bias.ndim != 1:
    raise ValueError(f"conv2d: expected x (N, H, W, Ci), kernel (KH, KW, Ci, Co), bias (Co,); "
                     f"got x.shape={x.shape}, kernel.shape={kernel.shape}, bias.shape={bias.shape}")
  kh, kw, ci, co = kernel.shape
  if x.shape[3] != ci or bias.shape[0] != co or kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"conv2d: x.shape={x.shape}, kernel.shape={kernel.shape} and "
                     f"bias.shape={bias.shape} do not fit (x's channels must equal kernel.shape[2],"
                     f" bias's length kernel.shape[3], and KH, KW must be odd)")


def _xla_conv(x, kernel, preferred=None, dimensions=_DIMENSIONS, padding="SAME"):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=dimensions,
                                  preferred_element_type=preferred)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_xla_bf16(x, kernel, bias, dtypes):
  del dtypes
  return (_xla_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), jnp.float32)
          + bias.astype(jnp.float32))


def _conv_xla_bf16_fwd(x, kernel, bias, dtypes):
  del dtypes
  x_op, kernel_op = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  return _xla_conv(x_op, kernel_op, jnp.float32) + bias.astype(jnp.float32), (x_op, kernel_op)


def _conv_xla_bf16_bwd(dtypes, residuals, g):
  x_op, kernel_op = residuals
  kh, kw = kernel_op.shape[:2]
  g_op = g.astype(jnp.bfloat16)
  # d x: the cotangent convolved with the spatially flipped kernel, input and output features
  # swapped ("HWOI"), "SAME" padding (odd kernels, stride 1).
  d_x = _xla_conv(g_op, jnp.flip(kernel_op, (0, 1)), jnp.float32, ("NHWC", "HWOI", "NHWC"))
  # d kernel[a, b, i, o] = sum over n, y, x of x[n, y + a - kh//2, x + b - kw//2, i] * g[n, y, x, o]:
  # a convolution of x (channels as its batch, images as its features) with g as the filter.
  d_kernel = _xla_conv(x_op, g_op, jnp.float32, ("CHWN", "IHWO", "HWNC"),
                       padding=((kh // 2, kh // 2), (kw // 2, kw // 2)))
  d_bias = jnp.sum(g.astype(jnp.float32), axis=(0, 1, 2))
  return tuple(d.astype(t) for d, t in zip((d_x, d_kernel, d_bias), dtypes))


_conv_xla_bf16.defvjp(_conv_xla_bf16_fwd, _conv_xla_bf16_bwd)


def conv2d_xla(x: jax.Array, kernel: jax.Array, bias: jax.Array,
               precision: str = "float32") -> jax.Array:
  """The convolution on XLA (see the module docstring); float32 (N, H, W, Co)."""
  if check_precision(precision) == "float32":
    return _xla_conv(x.astype(jnp.float32), kernel.astype(jnp.float32)) + bias.astype(jnp.float32)
  dtypes = (jnp.dtype(x.dtype), jnp.dtype(kernel.dtype), jnp.dtype(bias.dtype))
  return _conv_xla_bf16(x, kernel, bias, dtypes)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, precision: str = "float32",
           impl: str | None = None, relu: bool = False, result_dtype=jnp.float32) -> jax.Array:
  """conv(x, kernel) + bias, "SAME" zero padding, stride 1, in `precision`, then ReLU if `relu`
  (see the module docstring for the layouts and what each precision means); (N, H, W, Co) in
  `result_dtype`.

  Args:
    x: (N, H, W, Ci) activations.
    kernel: (KH, KW, Ci, Co) weights, KH and KW odd.
    bias: (Co,).
    precision: "float32" or "bfloat16".
    impl: "onednn", "xla" or None for `default_conv_impl()`.
    relu: apply max(., 0) to the result (on oneDNN, inside the convolution).
    result_dtype: float32, or bfloat16 with precision "bfloat16": the values the next
      convolution would round a float32 result to. For forward-only use: the cotangent of a
      bfloat16 result is bfloat16 too, and this convolution's bias gradient is summed from it.

  Differentiable in all three arguments under jit, grad, vmap and shard_map; gradients come back
  in each argument's dtype.

  Raises:
    ValueError: shapes that do not fit, an unknown precision or impl, a bfloat16 result of a
      float32 convolution.
    RuntimeError: impl="onednn" was asked for and oneDNN is unavailable (says why).
  """
  _check_shapes(x, kernel, bias)
  check_precision(precision)
  result_dtype = jnp.dtype(result_dtype)
  if result_dtype not in (jnp.float32, jnp.bfloat16) or (
      result_dtype == jnp.bfloat16 and precision != "bfloat16"):
    raise ValueError(f"conv2d: result_dtype={result_dtype} must be float32, or bfloat16 with "
                     f"precision='bfloat16' (got precision={precision!r})")
  impl = default_conv_impl() if impl is None else impl
  if impl == "onednn":
    if precision == "bfloat16" and not conv_onednn.bfloat16_native():
      warn_fallback("bfloat16 in hardware", f"oneDNN's best instruction set here is "
                    f"{conv_onednn.cpu_isa()}", "bfloat16 is emulated, no faster than float32")
    elif precision == "bfloat16" and not conv_onednn.bfloat16_faster():
      warn_fallback("fast bfloat16 (AMX)", f"oneDNN's bfloat16 convolutions on "
                    f"{conv_onednn.cpu_isa()} were measured 1.5-1.7x slower than float32",
                    "bfloat16 runs, slower than float32 here")
    return conv_onednn.conv_onednn(x, kernel, bias, jnp.dtype(precision), relu=relu,
                                   result_dtype=result_dtype)
  if impl == "xla":
    y = conv2d_xla(x, kernel, bias, precision)
    return (jax.nn.relu(y) if relu else y).astype(result_dtype)
  raise ValueError(f"conv2d: impl={impl!r} is not one of {CONV_IMPLEMENTATIONS} or None")
