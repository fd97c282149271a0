"""The kernel-map layout of the op, BKHW vs BHWK, alone and inside the full SepConv model (CPU).

    python benchmarks/bench_layout.py                  # 640x480, K=51, 5 repeats
    python benchmarks/bench_layout.py --repeats 3 --skip-model

Prints best-of-N milliseconds for
  op      the separable local convolution at WxH, K, C=3, B=1, forward and forward+backward
          (jax.value_and_grad over all three arguments: XLA would drop a forward whose value is
          unused), with the kernel maps given as
            BKHW            (B, K, H, W), the op's original layout
            BHWK native     (B, H, W, K) with kernel_layout="BHWK" (read directly by the kernel)
            BHWK+transpose  (B, H, W, K) transposed to BKHW in XLA first: what the NHWC model did
  model   SepConvNet(SepConvConfig()) forward, jitted, on frames padded to a multiple of 128 (640x480
          -> 640x512, as the improved padding policy does), with `local_separable_conv` as it was
          (four 51-channel maps transposed to BKHW in XLA) and as it is (kernel_layout="BHWK").
All variants run in one process, interleaved, so that they share the machine's load.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

import pallas_kernels


def _best_times(fns: dict, args: dict, repeats: int) -> dict:
  """Best-of-`repeats` seconds per variant; the variants take turns so that load is shared."""
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args[name]))  # compile and warm up
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[name]))
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def _operands(height, width, k, channels=3, batch=1):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  image = jax.random.uniform(keys[0], (batch, channels, height + k - 1, width + k - 1))
  vertical = jax.random.normal(keys[1], (batch, k, height, width)) / k
  horizontal = jax.random.normal(keys[2], (batch, k, height, width)) / k
  return image, vertical, horizontal


def bench_op(width: int, height: int, k: int, impl: str, repeats: int) -> None:
  image, vertical, horizontal = _operands(height, width, k)
  to_bhwk = lambda a: jnp.asarray(jnp.moveaxis(a, 1, -1))
  bhwk = (image, to_bhwk(vertical), to_bhwk(horizontal))
  ops = {
      "BKHW": lambda i, v, h: pallas_kernels.sepconv(i, v, h, impl=impl),
      "BHWK native": lambda i, v, h: pallas_kernels.sepconv(i, v, h, impl=impl,
                                                            kernel_layout="BHWK"),
      "BHWK+transpose": lambda i, v, h: pallas_kernels.sepconv(
          i, jnp.moveaxis(v, -1, 1), jnp.moveaxis(h, -1, 1), impl=impl),
  }
  args = {"BKHW": (image, vertical, horizontal), "BHWK native": bhwk, "BHWK+transpose": bhwk}
  forward = {name: jax.jit(op) for name, op in ops.items()}
  forward_backward = {
      name: jax.jit(jax.value_and_grad(lambda i, v, h, op=op: jnp.sum(op(i, v, h)),
                                       argnums=(0, 1, 2)))
      for name, op in ops.items()}
  fwd = _best_times(forward, args, repeats)
  fwd_bwd = _best_times(forward_backward, args, repeats)
  flops = 2 * 3 * height * width * k * k
  print(f"\nop alone, impl={impl}, {width}x{height}, K={k}, C=3, B=1 (best of {repeats})")
  print(f"{'kernel maps':>16} {'fwd ms':>8} {'GFLOP/s':>8} {'fwd+bwd ms':>11} {'GFLOP/s':>8}")
  for name in ops:
    print(f"{name:>16} {fwd[name] * 1e3:8.1f} {flops / fwd[name] / 1e9:8.1f} "
          f"{fwd_bwd[name] * 1e3:11.1f} {4 * flops / fwd_bwd[name] / 1e9:8.1f}", flush=True)


def _local_separable_conv_bkhw(frame, vertical, horizontal):
  """`sepconv_jax.network.model.local_separable_conv` as it was: kernel maps transposed to BKHW in XLA."""
  half = vertical.shape[-1] // 2
  image = jnp.transpose(frame, (0, 3, 1, 2))
  image = jnp.pad(image, ((0, 0), (0, 0), (half, half), (half, half)), mode="edge")
  out = pallas_kernels.sepconv(image, jnp.transpose(vertical, (0, 3, 1, 2)),
                               jnp.transpose(horizontal, (0, 3, 1, 2)))
  return jnp.transpose(out, (0, 2, 3, 1))


def bench_model(width: int, height: int, repeats: int) -> None:
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from sepconv_jax.network import model as model_lib  # pylint: disable=import-outside-toplevel

  padded_h, padded_w = (-(-s // 128) * 128 for s in (height, width))
  net = model_lib.SepConvNet(model_lib.SepConvConfig(), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(net)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  frames = tuple(jax.random.uniform(key, (1, padded_h, padded_w, 3)) for key in keys)
  current = model_lib.local_separable_conv

  def compiled(conv):
    # SepConvNet.__call__ looks `local_separable_conv` up in its module at trace time.
    model_lib.local_separable_conv = conv
    try:
      fn = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b))
      return fn.lower(state, *frames).compile()
    finally:
      model_lib.local_separable_conv = current

  fns = {"before (BKHW, XLA transposes)": compiled(_local_separable_conv_bkhw),
         "after (kernel_layout=BHWK)": compiled(current)}
  args = {name: (state, *frames) for name in fns}
  outs = {name: fn(*args[name]) for name, fn in fns.items()}
  a, b = outs.values()
  diff = float(jnp.abs(a - b).max())
  best = _best_times(fns, args, repeats)
  print(f"\nfull model forward, SepConvNet(SepConvConfig()), {width}x{height} padded to "
        f"{padded_w}x{padded_h}, B=1 (best of {repeats}); outputs differ by {diff:.2g}")
  for name, seconds in best.items():
    print(f"{name:>32} {seconds * 1e3:8.1f} ms", flush=True)
  names = list(best)
  print(f"{'saved':>32} {(best[names[0]] - best[names[1]]) * 1e3:8.1f} ms "
        f"({best[names[0]] / best[names[1]]:.2f}x)")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
  parser.add_argument("--k", type=int, default=51)
  parser.add_argument("--impl", default=None, help="op implementation (default: the fastest)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-model", action="store_true")
  parser.add_argument("--skip-op", action="store_true")
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.size.lower().split("x"))
  impl = args.impl or pallas_kernels.default_impl()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.default_backend()}; op impl={impl}")
  if not args.skip_op:
    bench_op(width, height, args.k, impl, args.repeats)
  if not args.skip_model:
    bench_model(width, height, args.repeats)
  return 0


if __name__ == "__main__":
  sys.exit(main())
