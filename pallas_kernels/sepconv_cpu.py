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
`~/.cache/sepconv_jax/`), keyed by a hash of the source, the flags, the compiler, the CPU and the
jaxlib version. `-march=native` makes the build specific to the CPU it was made on, hence the CPU in
the key. Set `SEPCONV_CPU_THREADS` to cap the number of threads a call uses (default: XLA's CPU
thread pool, one thread per core).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp

from pallas_kernels._shapes import KERNEL_LAYOUTS, check_kernel_layout, check_sepconv_shapes

__all__ = ["cpu_kernel_available", "cpu_kernel_unavailable_reason", "sepconv_cpu"]

_SOURCE = pathlib.Path(__file__).resolve().parent / "csrc" / "sepconv_cpu.cc"
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-pthread")
_TARGETS = {
    # FFI target name -> exported handler symbol.
    "sepconv_jax_cpu_forward": "SepconvCpuForward",
    "sepconv_jax_cpu_backward_image": "SepconvCpuBackwardImage",
    "sepconv_jax_cpu_backward_kernels": "SepconvCpuBackwardKernels",
}

_lock = threading.Lock()
_state: dict = {}  # "lib" (the loaded CDLL) or "error" (why it is unavailable), once decided


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("SEPCONV_JAX_CACHE")
  return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "sepconv_jax"


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_signature() -> str:
  """What `-march=native` depends on: the machine and, on Linux, the CPU model and feature flags."""
  parts = [platform.machine()]
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU part"):
          parts.append(line.strip())
        if key in ("flags", "Features"):
          break  # the first processor's block is enough
  except OSError:
    pass
  return "\n".join(parts)


def _build_library() -> pathlib.Path:
  """Compiles the kernels (or finds them in the cache); returns the shared library's path."""
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++)")
  source = _SOURCE.read_bytes()
  include_dir = jax.ffi.include_dir()
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           timeout=60).stdout.splitlines()[:1]
  key = hashlib.sha256()
  for part in (source, " ".join(_FLAGS).encode(), compiler.encode(), "".join(version).encode(),
               _jaxlib_version().encode(), _cpu_signature().encode()):
    key.update(part)
    key.update(b"\0")
  cache = _cache_dir()
  target = cache / f"sepconv_cpu_{key.hexdigest()[:24]}.so"
  if target.is_file():
    return target
  cache.mkdir(parents=True, exist_ok=True)
  # Build under a temporary name in the cache dir, then rename: the rename is atomic on POSIX, so
  # a concurrent process sees either no library or a whole one, never a half-written file.
  fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=cache)
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, f"-I{include_dir}", str(_SOURCE), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
      raise RuntimeError(f"compiling {_SOURCE.name} failed ({' '.join(cmd)}):\n"
                         f"{proc.stderr[-4000:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return target


def _jaxlib_version() -> str:
  # The FFI headers and ABI come with jaxlib; `jax.lib.__version__` is its version.
  return str(getattr(jax.lib, "__version__", "")) + "/" + jax.__version__


def _load() -> ctypes.CDLL | None:
  """Builds, loads and registers the kernels once per process; never raises."""
  with _lock:
    if "lib" in _state or "error" in _state:
      return _state.get("lib")
    try:
      lib = ctypes.cdll.LoadLibrary(str(_build_library()))
      for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
      _state["lib"] = lib
    except Exception as e:  # noqa: BLE001 -- any failure means "not available", with the reason
      _state["error"] = f"{type(e).__name__}: {e}"
    return _state.get("lib")


def cpu_kernel_available() -> bool:
  """True when the C++ kernels are built (or cached), loaded and registered with XLA."""
  return _load() is not None


def cpu_kernel_unavailable_reason() -> str | None:
  """Why `cpu_kernel_available()` is False (no compiler, build error, ...); None when available."""
  _load()
  return _state.get("error")


def _threads() -> int:
  value = os.environ.get("SEPCONV_CPU_THREADS", "")
  return int(value) if value.strip() else 0


def _require_kernels() -> None:
  if _load() is None:
    raise RuntimeError(f"sepconv_cpu: the C++ kernels are unavailable: {_state.get('error')}")


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
  _require_kernels()
  out_dtype = jnp.result_type(image, vertical, horizontal)
  out = _sepconv_f32(jnp.asarray(image, jnp.float32), jnp.asarray(vertical, jnp.float32),
                     jnp.asarray(horizontal, jnp.float32), layout)
  return out.astype(out_dtype)
