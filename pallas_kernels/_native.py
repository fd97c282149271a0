"""Native (C++) kernels behind `jax.ffi`, compiled on first use and cached.

`NativeLibrary` builds one C++ source into a shared library with the system compiler, loads it and
registers its XLA FFI handlers for the CPU platform, once per process and never raising: when any
step fails, `available()` is False and `unavailable_reason()` says why in one line. The callers
(`sepconv_cpu`, `conv_onednn`) then fall back to plain XLA, and `warn_fallback` says so once.

Cache. Libraries live under `$SEPCONV_JAX_CACHE` (default `~/.cache/sepconv_jax/`), named by a
hash of everything the binary depends on: the source and the headers beside it, the flags, the compiler and its version, the
jaxlib version (the FFI headers and ABI), the CPU (`-march=native` makes a build specific to it)
and whatever else the caller names (a library's version). A build is written under a temporary
name in the cache directory and renamed into place, which is atomic on POSIX, so concurrent
processes see either no library or a whole one. When the cache directory cannot be written
(read-only home, full disk), the build goes to a per-user directory under the system's temporary
directory instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Sequence

import jax

CSRC = pathlib.Path(__file__).resolve().parent / "csrc"

_warned: set[str] = set()
_warn_lock = threading.Lock()


def cache_dir() -> pathlib.Path:
  """Where built libraries are kept: `$SEPCONV_JAX_CACHE`, else `~/.cache/sepconv_jax`."""
  root = os.environ.get("SEPCONV_JAX_CACHE")
  return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "sepconv_jax"


def _fallback_cache_dir() -> pathlib.Path:
  user = str(os.getuid()) if hasattr(os, "getuid") else "user"
  return pathlib.Path(tempfile.gettempdir()) / f"sepconv_jax-{user}"


def compiler() -> str | None:
  """The C++ compiler: `$CXX`, else `c++`, else `g++`; None when there is none."""
  for name in (os.environ.get("CXX"), "c++", "g++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def cpu_signature() -> str:
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


def jaxlib_version() -> str:
  # The FFI headers and ABI come with jaxlib; `jax.lib.__version__` is its version.
  return str(getattr(jax.lib, "__version__", "")) + "/" + jax.__version__


def warn_fallback(what: str, reason: str, consequence: str) -> None:
  """One warning line per `what` and process: `what` is unavailable (`reason`), `consequence`."""
  with _warn_lock:
    if what in _warned:
      return
    _warned.add(what)
  warnings.warn(f"sepconv_jax: {what} is unavailable ({reason}); {consequence}", RuntimeWarning,
                stacklevel=3)


class NativeLibrary:
  """One C++ source built into a shared library of XLA FFI handlers (see the module docstring).

  Args:
    name: Short name, used for the cached file and in messages.
    source: The C++ file.
    targets: {FFI target name: exported handler symbol}.
    compile_flags: Flags before the source (optimisation, include directories, ...).
    link_flags: Flags after the source (libraries).
    key_parts: Anything else the binary depends on (e.g. a library's version), hashed into the
      cache key.
  """

  def __init__(self, name: str, source: pathlib.Path, targets: dict[str, str],
               compile_flags: Sequence[str] = (), link_flags: Sequence[str] = (),
               key_parts: Sequence[str] = ()):
    self.name = name
    self.source = source
    self.targets = dict(targets)
    self.compile_flags = tuple(compile_flags)
    self.link_flags = tuple(link_flags)
    self.key_parts = tuple(key_parts)
    self._lock = threading.Lock()
    self._lib: ctypes.CDLL | None = None
    self._error: str | None = None

  def _command(self, compiler_path: str, output: str) -> list[str]:
    return [compiler_path, "-shared", "-fPIC", "-std=c++17", *self.compile_flags,
            f"-I{jax.ffi.include_dir()}", str(self.source), "-o", output, *self.link_flags]

  def _cache_key(self, compiler_path: str) -> str:
    version = subprocess.run([compiler_path, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256()
    # The source and the headers beside it (`#include "..."`).
    headers = [h.read_bytes() for h in sorted(self.source.parent.glob("*.h"))]
    for part in (self.source.read_bytes(), *headers,
                 " ".join(self._command(compiler_path, "")).encode(),
                 "".join(version).encode(), jaxlib_version().encode(), cpu_signature().encode(),
                 *(p.encode() for p in self.key_parts)):
      key.update(part)
      key.update(b"\0")
    return key.hexdigest()[:24]

  def _build_in(self, directory: pathlib.Path, compiler_path: str, key: str) -> pathlib.Path:
    target = directory / f"{self.name}_{key}.so"
    if target.is_file():
      return target
    directory.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name in the cache dir, then renamed (see the module docstring).
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=directory)
    os.close(fd)
    try:
      cmd = self._command(compiler_path, tmp)
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
      if proc.returncode != 0:
        raise RuntimeError(f"compiling {self.source.name} failed ({' '.join(cmd)}):\n"
                           f"{proc.stderr[-4000:]}")
      os.chmod(tmp, 0o755)
      os.replace(tmp, target)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
    return target

  def build(self) -> pathlib.Path:
    """Compiles the library (or finds it in the cache); returns its path. Raises on failure."""
    compiler_path = compiler()
    if compiler_path is None:
      raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++)")
    key = self._cache_key(compiler_path)
    try:
      return self._build_in(cache_dir(), compiler_path, key)
    except OSError as first:
      # An unwritable cache (read-only home, no space): a private temporary directory instead.
      try:
        return self._build_in(_fallback_cache_dir(), compiler_path, key)
      except OSError as second:
        raise RuntimeError(f"cannot write the build cache {cache_dir()} ({first.strerror}) nor "
                           f"{_fallback_cache_dir()} ({second.strerror})") from second

  def load(self) -> ctypes.CDLL | None:
    """Builds, loads and registers the handlers once per process; never raises."""
    with self._lock:
      if self._lib is not None or self._error is not None:
        return self._lib
      try:
        lib = ctypes.cdll.LoadLibrary(str(self.build()))
        for target, symbol in self.targets.items():
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                      platform="cpu")
        self._lib = lib
      except Exception as e:  # noqa: BLE001 -- any failure means "not available", with the reason
        self._error = f"{type(e).__name__}: {e}".splitlines()[0]
        self._detail = f"{type(e).__name__}: {e}"
      return self._lib

  def available(self) -> bool:
    """True when the library is built (or cached), loaded and its handlers registered."""
    return self.load() is not None

  def unavailable_reason(self) -> str | None:
    """Why `available()` is False, in one line (no compiler, build error, ...); None otherwise."""
    self.load()
    return self._error

  def require(self) -> ctypes.CDLL:
    """The loaded library; RuntimeError with the full reason when it cannot be had."""
    lib = self.load()
    if lib is None:
      raise RuntimeError(f"{self.name}: the C++ kernels are unavailable: {self._detail}")
    return lib
