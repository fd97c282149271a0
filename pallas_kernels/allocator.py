"""Memory reuse for XLA:CPU on glibc: freed large blocks are kept for the next step, not unmapped.

XLA allocates the buffers of every execution afresh, and glibc serves any allocation above 32 MB
(its largest mmap threshold) with a fresh `mmap`, then unmaps it on free: every frame or training
step starts with zero-filled pages the kernel has to fault in one 4 KiB page at a time. Measured
on the project's 2-core machine, the U-Net at 640x512 (bfloat16 on oneDNN) took ~96,000 page
faults and 0.2-0.3 s of system time per call, a third of its wall time. With glibc told never to
use mmap for allocations (`M_MMAP_MAX` 0, so that large blocks come from the heap) and to keep
freed memory instead of returning it (`M_TRIM_THRESHOLD` 2 GiB), the second call onwards reuses
the first call's pages: the network ran in 0.38 s instead of 0.51 s (benchmarks/bench_compute.py).

The process's peak memory does not grow (the reused blocks are the ones the peak already held),
but memory freed after a peak is kept by the process until it exits rather than returned to the
system. This is a process-wide malloc setting, so the library does not make it on its own: the
command-line tools (`sepconv interpolate`, `sepconv train`, the benchmarks) call
`keep_freed_memory()` first, and a notebook or program may call it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int


@functools.cache
def keep_freed_memory() -> bool:
  """Tells glibc malloc to serve large blocks from the heap and keep freed memory for reuse (see
  the module docstring). Returns whether it took effect (False off Linux/glibc); idempotent."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
  except (OSError, AttributeError):
    return False
