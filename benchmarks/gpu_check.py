"""The GPU check: one command that tells whether the GPU path works and how close it runs to the
hardware. On a GPU machine, after `pip install -e ".[cuda12,test]"`:

    python benchmarks/gpu_check.py                         # about 5 min on an H100/H200
    python benchmarks/gpu_check.py --json gpu_check.json   # also write the table as JSON

Parts, in order (each row of the table is one measurement; a failing part is a row with its
error, and the check goes on):
  tests     the Pallas kernel tests (`tests/test_sepconv.py`), compiled: on a GPU the suite's
            `interpret` fixture is False, so every kernel is built by Triton and run.
  parity    the Pallas op (forward, d image, d vertical, d horizontal) against the plain-JAX
            reference (`pallas_kernels.reference`) at K = 51 on sizes of several tiles that the
            tiles do not divide, float32: the largest error relative to the reference's largest
            magnitude.
  op        the op's forward and forward + backward (all three gradients) at 1280x720 and
            1920x1080 (batch 1, 3 channels, K = 51): milliseconds, GFLOP/s and the share of the
            roofline of the detected GPU (its float32 CUDA-core peak and memory bandwidth: the op
            is per-pixel multiply-adds, and the d image kernel's banded matrix products are
            float32 IEEE, so tensor cores do not apply; that kernel does ~3.8x the useful
            multiply-adds, which the share of the roofline counts against it).
  model     `Interpolator.default(align=0.0)` end to end (uint8 frames in and out, one network
            call, no tiling, no pre-alignment) at 1920x1080 in float32 and bfloat16.
  train     one training step (L1, AdaMax, the published network) on a batch of 16 128x128 crops,
            float32 and bfloat16.

Useful FLOPs of the op, per output pixel and channel: forward 2K(K+1) (K row sums of K taps,
then K vertical taps); forward + backward 4x that (each of the three gradients is one K x K
contraction per pixel and channel). Bytes: the image window once, both kernel maps once, the
output once (the least any implementation must move).

`--tiny` runs every part at toy sizes (K = 5, a tiny network, Pallas in interpret mode when
there is no GPU), so that the test suite runs this script on CPU and it cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/gpu_check.py` from anywhere
  sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pallas_kernels  # noqa: E402
from benchmarks.bench_sepconv import _best_time as best_seconds  # noqa: E402
from benchmarks.bench_sepconv import operands as bench_operands  # noqa: E402
from pallas_kernels.reference import sepconv_reference  # noqa: E402

# float32 CUDA-core peak (TFLOP/s, boost clock, dense) and memory bandwidth (TB/s), from the
# vendors' data sheets, matched against `device_kind` (longest name first).
GPU_PEAKS = {
    "H200": (66.9, 4.8),
    "H100 PCIe": (51.2, 2.0),
    "H100": (66.9, 3.35),  # SXM
    "GH200": (66.9, 4.0),
    "A100-SXM4-80GB": (19.5, 2.04),
    "A100": (19.5, 1.56),
    "L40S": (91.6, 0.864),
    "L40": (90.5, 0.864),
    "L4": (30.3, 0.3),
    "A10G": (31.2, 0.6),
    "A10": (31.2, 0.6),
    "RTX 4090": (82.6, 1.0),
    "RTX 3090": (35.6, 0.936),
    "V100": (15.7, 0.9),
    "T4": (8.1, 0.32),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What each part runs at: the full check, or toys for the test suite."""
  k: int
  parity: tuple[tuple[int, int, int], ...]  # (batch, height, width)
  op: tuple[tuple[int, int], ...]           # (width, height)
  model: tuple[int, int]                    # (width, height)
  train_batch: int
  train_crop: int
  repeats: int


FULL = Sizes(k=51, parity=((2, 70, 90), (1, 37, 131)), op=((1280, 720), (1920, 1080)),
             model=(1920, 1080), train_batch=16, train_crop=128, repeats=10)
TINY = Sizes(k=5, parity=((2, 20, 36),), op=((48, 32),), model=(96, 64), train_batch=2,
             train_crop=32, repeats=2)


@dataclasses.dataclass
class Row:
  part: str
  case: str
  ok: bool
  value: str = ""         # the figure, as printed
  detail: str = ""        # units, roofline share, or the error
  data: dict = dataclasses.field(default_factory=dict)  # the same figures, for the JSON


def device_description() -> dict:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  peak = next((GPU_PEAKS[name] for name in sorted(GPU_PEAKS, key=len, reverse=True)
               if name.lower() in kind.lower()), None) if device.platform == "gpu" else None
  return {"platform": device.platform, "kind": kind, "count": jax.device_count(),
          "jax": jax.__version__, "fp32_tflops": peak[0] if peak else None,
          "tb_per_s": peak[1] if peak else None}


def op_flops(batch: int, channels: int, height: int, width: int, k: int) -> float:
  return 2.0 * batch * channels * height * width * k * (k + 1)


def op_bytes(batch: int, channels: int, height: int, width: int, k: int) -> float:
  image = channels * (height + k - 1) * (width + k - 1)
  return 4.0 * batch * (image + 2 * k * height * width + channels * height * width)


def operands(batch: int, height: int, width: int, k: int, channels: int = 3):
  """`bench_sepconv.operands` (image, vertical, horizontal) and a cotangent for the output."""
  image, vertical, horizontal = bench_operands(height, width, k, channels, batch)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), (batch, channels, height, width))
  return image, vertical, horizontal, cotangent


# ------------------------------------------------------------------------------------------------
# Parts. Each returns rows; an exception inside a part becomes a failing row (see `run_part`).


def part_tests(test_filter: str | None) -> list[Row]:
  # In this process's device, one test at a time (`-n 0`: no pytest-xdist workers sharing it).
  command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
             str(REPO_ROOT / "tests" / "test_sepconv.py")]
  if test_filter:
    command += ["-k", test_filter]
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  summary = next((line.strip("= ") for line in reversed(lines)
                  if re.search(r"\d+ (passed|failed|error)", line)), "no summary")
  mode = "compiled" if jax.default_backend() == "gpu" else "interpret mode (no GPU)"
  failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
  return [Row("tests", f"tests/test_sepconv.py, {mode}", result.returncode == 0, summary,
              f"{time.perf_counter() - start:.0f} s" + (f"; {failures[0]}" if failures else ""),
              {"returncode": result.returncode, "summary": summary, "failures": failures})]


def part_parity(sizes: Sizes, interpret: bool) -> list[Row]:
  rows = []
  op = functools.partial(pallas_kernels.sepconv, impl="pallas", interpret=interpret)
  for batch, height, width in sizes.parity:
    image, vertical, horizontal, cotangent = operands(batch, height, width, sizes.k)
    out, vjp = jax.vjp(jax.jit(op), image, vertical, horizontal)
    ref, ref_vjp = jax.vjp(sepconv_reference, image, vertical, horizontal)
    names = ("forward", "d image", "d vertical", "d horizontal")
    errors = {}
    for name, got, want in zip(names, (out, *vjp(cotangent)), (ref, *ref_vjp(cotangent))):
      scale = float(jnp.max(jnp.abs(want))) or 1.0
      errors[name] = float(jnp.max(jnp.abs(got - want))) / scale
    worst = max(errors.values())
    rows.append(Row("parity", f"K={sizes.k}, {batch}x{height}x{width}", worst < 1e-4,
                    f"{worst:.1e}", "max |error| / max |reference|, all four outputs",
                    {"relative_errors": errors}))
  return rows


def part_op(sizes: Sizes, device: dict, interpret: bool) -> list[Row]:
  rows = []
  op = functools.partial(pallas_kernels.sepconv, impl="pallas", interpret=interpret)
  forward = jax.jit(op)
  # value_and_grad, not grad: a forward whose output nobody uses would be dropped by XLA.
  both = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(op(*a)), argnums=(0, 1, 2)))
  for width, height in sizes.op:
    image, vertical, horizontal, _ = operands(1, height, width, sizes.k)
    flops, moved = op_flops(1, 3, height, width, sizes.k), op_bytes(1, 3, height, width, sizes.k)
    for name, fn, factor in (("forward", forward, 1), ("forward+backward", both, 4)):
      seconds = best_seconds(fn, (image, vertical, horizontal), sizes.repeats)
      data = {"ms": seconds * 1e3, "gflops": factor * flops / seconds / 1e9}
      detail = f"{data['gflops']:.0f} GFLOP/s"
      if device["fp32_tflops"]:
        roofline = max(factor * flops / (device["fp32_tflops"] * 1e12),
                       factor * moved / (device["tb_per_s"] * 1e12))
        data.update(roofline_ms=roofline * 1e3, share_of_roofline=roofline / seconds)
        detail += f", roofline {roofline * 1e3:.3f} ms ({100 * roofline / seconds:.0f}% of it)"
      rows.append(Row("op", f"{name} {width}x{height}", True, f"{seconds * 1e3:.3f} ms",
                      detail, data))
  return rows


def _model(tiny: bool):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from sepconv_jax.inference.interpolator import Interpolator  # pylint: disable=import-outside-toplevel
  from sepconv_jax.network.model import SepConvConfig, SepConvNet  # pylint: disable=import-outside-toplevel
  if tiny:
    return lambda **kw: Interpolator(SepConvNet(SepConvConfig.tiny(), rngs=nnx.Rngs(0)), **kw)
  return functools.partial(Interpolator.default, align=0.0)  # the network, not the CPU-side flow


def part_model(sizes: Sizes, tiny: bool) -> list[Row]:
  rows = []
  width, height = sizes.model
  rng = np.random.default_rng(0)
  first, second = (rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2))
  make = _model(tiny)
  for precision in ("float32", "bfloat16"):
    interpolator = make(precision=precision, max_untiled_pixels=None)
    seconds = best_seconds(lambda a, b: interpolator(a, b), (first, second),
                           max(1, sizes.repeats // 2))
    rows.append(Row("model", f"end to end {width}x{height}, {precision}", True,
                    f"{seconds * 1e3:.1f} ms", f"{1 / seconds:.1f} frames/s; "
                    f"{interpolator.describe_compute()}", {"ms": seconds * 1e3}))
  return rows


def part_train(sizes: Sizes, tiny: bool) -> list[Row]:
  from sepconv_jax.network.model import ConvOptions, SepConvConfig  # pylint: disable=import-outside-toplevel
  from sepconv_jax.training import losses, steps  # pylint: disable=import-outside-toplevel
  from sepconv_jax.training.configs import TrainConfig  # pylint: disable=import-outside-toplevel
  rows = []
  batch, size = sizes.train_batch, sizes.train_crop
  model = SepConvConfig.tiny() if tiny else SepConvConfig()
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  example = {name: jax.random.uniform(key, (batch, size, size, 3))
             for name, key in zip(("x0", "x1", "y"), keys)}
  for precision in ("float32", "bfloat16"):
    config = TrainConfig(model=model, batch_size=batch, crop_size=size, precision=precision)
    conv = ConvOptions(precision).resolved()
    graphdef, state = steps.create_train_state(config)
    step = jax.jit(functools.partial(steps.train_step, graphdef=graphdef,
                                     loss_fn=losses.get_loss("l1"),
                                     optimizer=steps.make_optimizer(config), conv=conv),
                   donate_argnums=0, compiler_options=steps.jit_options(conv))
    state, metrics = step(state, example)  # compile and warm up
    jax.block_until_ready(state)
    times = []
    for _ in range(max(1, sizes.repeats // 2)):
      start = time.perf_counter()
      state, metrics = step(state, example)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
    seconds = min(times)
    loss = float(metrics["loss"])
    rows.append(Row("train", f"step, batch {batch} x {size}x{size}, {precision}",
                    bool(np.isfinite(loss)), f"{seconds * 1e3:.1f} ms",
                    f"{batch / seconds:.1f} crops/s, loss {loss:.4f}",
                    {"ms": seconds * 1e3, "loss": loss}))
  return rows


def run_part(name: str, fn) -> list[Row]:
  start = time.perf_counter()
  print(f"[{name}] ...", file=sys.stderr, flush=True)
  try:
    rows = fn()
  except Exception as error:  # pylint: disable=broad-except
    message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    traceback.print_exc(file=sys.stderr)
    rows = [Row(name, "(part failed)", False, "", message, {"error": message})]
  print(f"[{name}] done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
  return rows


def format_table(device: dict, rows: list[Row]) -> str:
  peak = (f"{device['fp32_tflops']} TFLOP/s float32, {device['tb_per_s']} TB/s"
          if device["fp32_tflops"] else "peak unknown: no roofline")
  lines = [f"device: {device['kind']} x{device['count']} ({device['platform']}; {peak}); "
           f"jax {device['jax']}", ""]
  header = ("part", "case", "ok", "value", "detail")
  table = [header] + [(r.part, r.case, "ok" if r.ok else "FAIL", r.value, r.detail) for r in rows]
  widths = [max(len(row[i]) for row in table) for i in range(4)]
  for row in table:
    lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths))
                 + "  " + row[4])
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", metavar="PATH", help="also write the table as JSON")
  parser.add_argument("--tiny", action="store_true",
                      help="toy sizes (the test suite's run on CPU)")
  parser.add_argument("--parts", default="tests,parity,op,model,train",
                      help="comma-separated subset of tests,parity,op,model,train")
  parser.add_argument("--tests-filter", metavar="EXPR", help="pytest -k for the tests part")
  args = parser.parse_args(argv)
  parts = [p for p in args.parts.split(",") if p]
  unknown = sorted(set(parts) - {"tests", "parity", "op", "model", "train"})
  if unknown:
    parser.error(f"unknown part(s): {', '.join(unknown)}")

  sizes = TINY if args.tiny else FULL
  device = device_description()
  interpret = device["platform"] != "gpu"
  if interpret and not args.tiny:
    print("warning: no GPU: the Pallas kernels run in interpret mode (slow); use --tiny",
          file=sys.stderr)
  runners = {
      "tests": lambda: part_tests(args.tests_filter),
      "parity": lambda: part_parity(sizes, interpret),
      "op": lambda: part_op(sizes, device, interpret),
      "model": lambda: part_model(sizes, args.tiny),
      "train": lambda: part_train(sizes, args.tiny),
  }
  rows = [row for part in parts for row in run_part(part, runners[part])]
  print(format_table(device, rows))
  if args.json:
    payload = {"device": device, "tiny": args.tiny,
               "rows": [dataclasses.asdict(row) for row in rows]}
    temporary = pathlib.Path(args.json).with_suffix(".json.partial")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, args.json)
  return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
