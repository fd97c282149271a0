"""Throughput of the separable local convolution, every implementation in one run.

    python benchmarks/bench_sepconv.py               # 256x256, 640x480, 1280x720, K=51, C=3
    python benchmarks/bench_sepconv.py --sizes 640x480 --repeats 5

Prints GFLOP/s with FLOPs counted as 2*C*H*W*K*K per image for the forward pass and 4x that for
forward+backward (each of the three gradients costs as many multiply-adds as the forward), the
ratio of each implementation to the plain XLA loop (`xla`), and the machine's float32 matmul
GFLOP/s for scale. On a GPU it times the Pallas kernels; on a CPU the C++ kernel (`cpu`) and the
XLA path (`xla`); `--impls` picks others (the reference and interpreted Pallas are very slow).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels


def _best_time(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> tuple[float, float]:
  """float32 matmul GFLOP/s through jnp.matmul and through NumPy (OpenBLAS)."""
  a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
  flops = 2 * size**3
  jax_time = _best_time(jax.jit(jnp.matmul), (jnp.asarray(a), jnp.asarray(a)), repeats)
  numpy_time = min(_timed(lambda: a @ a) for _ in range(repeats))
  return flops / jax_time / 1e9, flops / numpy_time / 1e9


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def operands(height: int, width: int, k: int = 51, channels: int = 3, batch: int = 1):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  image = jax.random.uniform(keys[0], (batch, channels, height + k - 1, width + k - 1))
  vertical = jax.random.normal(keys[1], (batch, k, height, width)) / k
  horizontal = jax.random.normal(keys[2], (batch, k, height, width)) / k
  return image, vertical, horizontal


def bench_op(impl: str, size: tuple[int, int], k: int, repeats: int) -> tuple[float, float]:
  """Seconds for the forward pass and for forward+backward (grad w.r.t. all three arguments)."""
  args = operands(size[1], size[0], k)
  forward = jax.jit(lambda *a: pallas_kernels.sepconv(*a, impl=impl))
  loss = lambda *a: jnp.sum(pallas_kernels.sepconv(*a, impl=impl))
  # value_and_grad, not grad: a forward whose output nobody uses would be dropped by XLA.
  forward_backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return _best_time(forward, args, repeats), _best_time(forward_backward, args, repeats)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="256x256,640x480,1280x720",
                      help="comma-separated WIDTHxHEIGHT list")
  parser.add_argument("--k", type=int, default=51, help="taps per kernel")
  parser.add_argument("--impls", default=None,
                      help="comma-separated implementations (default: pallas on GPU, cpu,xla on CPU)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  try:
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    if any(len(s) != 2 or min(s) < 1 for s in sizes):
      raise ValueError
  except ValueError:
    parser.error(f"--sizes {args.sizes!r}: expected WIDTHxHEIGHT[,WIDTHxHEIGHT...]")
  backend = jax.default_backend()
  if args.impls:
    impls = args.impls.split(",")
  elif backend == "gpu":
    impls = ["pallas", "xla"]
  else:
    impls = [pallas_kernels.default_impl(), "xla"] if pallas_kernels.default_impl() != "xla" \
        else ["xla"]
  unknown = set(impls) - set(pallas_kernels.IMPLEMENTATIONS)
  if unknown:
    parser.error(f"--impls: unknown {sorted(unknown)}; choose from {pallas_kernels.IMPLEMENTATIONS}")

  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {backend} ({jax.devices()[0].device_kind})")
  jax_mm, numpy_mm = matmul_gflops()
  print(f"float32 matmul 2048^3: jnp.matmul {jax_mm:.0f} GFLOP/s, numpy {numpy_mm:.0f} GFLOP/s")
  print(f"K={args.k}, C=3, B=1; GFLOP/s counts 2*C*H*W*K*K forward, 4x that forward+backward")
  header = f"{'size':>10} {'impl':>9} {'fwd ms':>9} {'fwd GFLOP/s':>12} {'fwd+bwd ms':>11} " \
           f"{'fwd+bwd GFLOP/s':>16} {'fwd vs xla':>11}"
  print(header)
  print("-" * len(header))
  for width, height in sizes:
    flops = 2 * 3 * height * width * args.k**2
    results = {impl: bench_op(impl, (width, height), args.k, args.repeats) for impl in impls}
    for impl, (fwd, fwd_bwd) in results.items():
      ratio = results["xla"][0] / fwd if "xla" in results else float("nan")
      print(f"{width}x{height:<5} {impl:>9} {fwd * 1e3:9.1f} {flops / fwd / 1e9:12.1f} "
            f"{fwd_bwd * 1e3:11.1f} {4 * flops / fwd_bwd / 1e9:16.1f} {ratio:10.2f}x", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
