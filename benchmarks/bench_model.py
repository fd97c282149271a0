"""End-to-end speed of the full SepConv model: JAX/Flax against an independent PyTorch network.

    python benchmarks/bench_model.py                          # 640x480 and 1280x720, training too
    python benchmarks/bench_model.py --sizes 640x480 --repeats 3 --skip-training
    python benchmarks/bench_model.py --skip-torch             # JAX only (no torch installed)

Inference, per frame size (B = 1, the published architecture, K = 51, improved padding: 640x480
is run at 640x512 and 1280x720 at 1280x768, as the published reference pads), best and median of
`--repeats` seconds per interpolated frame:
  end to end  JAX: `sepconv_jax.Interpolator` on uint8 RGB frames (pad, network, op, crop, round),
              the op's default implementation for the backend (`pallas_kernels.default_impl`).
              PyTorch: the same steps in eager mode under `torch.inference_mode()`.
  network     the U-Net and the four subnets up to the four kernel maps (jitted in JAX).
  op          the two separable local convolutions (with their 25-pixel replicate padding) that
              turn the kernel maps and the frames into the output.
The PyTorch network is `benchmarks/torch_sepconv.py` (written from the published architecture, with
its state-dict keys); its op here is the straightforward loop over taps in its faster form: for
each of the 51 vertical taps, the horizontal sum as 51 in-place multiply-adds (`addcmul_`), then
one more multiply-add by the vertical weight (about 21 GFLOP/s on a 2-core Xeon, the fastest plain
PyTorch formulation; the tests' 51 x 51 double loop with temporaries is slower: `--torch-op taps`
times it).
PyTorch runs with `torch.set_num_threads(t)` for each t of `--threads` (default 2 and 1): 2 = the
cores of the reference machine, which XLA's CPU client uses too; 1 because on a loaded shared
machine PyTorch's two OpenMP threads can wait on each other far longer than they gain (measured
here: the op at 256x256 took 0.33 s on one thread and 0.8 to 15 s on two at load average 6). The
ratio uses PyTorch's best setting. The JAX model is the PyTorch network's weights
converted with `sepconv_jax.network.convert`, and the two outputs are compared, so both sides compute the
same function. The variants take turns within each repeat, so that they share the machine's load.

Training (JAX): one `sepconv_jax.training.train_step` (L1 loss, AdaMax, the op's custom VJP),
jitted with the state donated, at batch 4 and 16 of 128x128, best and median seconds per step.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/bench_model.py` from anywhere
  sys.path.insert(0, str(REPO_ROOT))

import pallas_kernels  # noqa: E402
from sepconv_jax.inference.interpolator import Interpolator  # noqa: E402
from sepconv_jax.network.model import SepConvConfig, SepConvNet, local_separable_conv  # noqa: E402
from sepconv_jax.network.padding import pad, plan_padding  # noqa: E402

KERNEL_SIZE = 51


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  device = jax.devices()[0]
  return (f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}; "
          f"python {platform.python_version()}, jax {jax.__version__} on {jax.default_backend()} "
          f"({device.device_kind}), op impl {pallas_kernels.default_impl()!r}")


def load_average() -> str:
  try:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
  except OSError:
    return "n/a"


def _frames(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Two smooth, slightly shifted uint8 RGB frames (content does not change the timing)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  base = np.stack([np.sin(x / 37 + c) * np.cos(y / 23 - c) for c in range(3)], axis=-1)
  noise = rng.normal(0, 0.05, (height, width, 3)).astype(np.float32)
  first = base + noise
  second = np.roll(base, 3, axis=1) + noise
  to_u8 = lambda a: np.clip(np.round((a + 1.2) / 2.4 * 255), 0, 255).astype(np.uint8)
  return to_u8(first), to_u8(second)


def _timed_rounds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
  """Seconds of each no-argument callable, `repeats` times, taking turns; one untimed warm-up."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


# ------------------------------------------------------------------------------------------------
# PyTorch side


def torch_sepconv_rows(image, vertical, horizontal):
  """out[n,c,y,x] = sum_i V[n,i,y,x] * sum_j image[n,c,y+i,x+j] * H[n,j,y,x], loop over taps.

  For each vertical tap i, the horizontal sum of row y+i is built with K in-place multiply-adds,
  then added into the output weighted by V[:, i]: 2 * K * K + 2 * K passes, no temporaries.
  """
  import torch  # pylint: disable=import-outside-toplevel
  k, height, width = vertical.shape[1:]
  out = image.new_zeros(image.shape[0], image.shape[1], height, width)
  row = torch.empty_like(out)
  for i in range(k):
    row.zero_()
    for j in range(k):
      row.addcmul_(image[:, :, i:i + height, j:j + width], horizontal[:, j:j + 1])
    out.addcmul_(row, vertical[:, i:i + 1])
  return out


class TorchModel:
  """The independent PyTorch network, split like the JAX side (network, op) and end to end."""

  def __init__(self, op: str):
    import torch  # pylint: disable=import-outside-toplevel
    from benchmarks import torch_sepconv  # pylint: disable=import-outside-toplevel
    self.torch = torch
    torch.manual_seed(0)
    self.net = torch_sepconv.TorchSepConvNet(KERNEL_SIZE).eval()
    self.op = torch_sepconv_rows if op == "rows" else torch_sepconv.separable_local_conv_loop

  def state_dict(self) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in self.net.state_dict().items()}

  def kernel_maps(self, first, second):
    """The four (N, K, H, W) kernel maps: the network's forward without the op."""
    return self.net.kernel_maps(first, second)

  def apply_op(self, first, second, maps):
    half = KERNEL_SIZE // 2
    replicate = lambda x: self.torch.nn.functional.pad(x, [half] * 4, mode="replicate")
    vertical1, horizontal1, vertical2, horizontal2 = maps
    return (self.op(replicate(first), vertical1, horizontal1)
            + self.op(replicate(second), vertical2, horizontal2))

  def padded_inputs(self, first: np.ndarray, second: np.ndarray):
    """uint8 (H, W, 3) frames -> (1, 3, H', W') float tensors, improved padding (128 multiple)."""
    plan = plan_padding(*first.shape[:2], policy="improved", kernel_size=KERNEL_SIZE)
    to_tensor = lambda f: self.torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0
    replicate = functools.partial(self.torch.nn.functional.pad,
                                  pad=[0, plan.right, 0, plan.bottom], mode="replicate")
    return replicate(to_tensor(first)), replicate(to_tensor(second)), plan

  def interpolate(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """End to end, as `Interpolator` does it: uint8 RGB in, pad, network, op, crop, uint8 out."""
    with self.torch.inference_mode():
      one, two, plan = self.padded_inputs(first, second)
      out = self.apply_op(one, two, self.kernel_maps(one, two))
      out = out[0, :, :plan.height, :plan.width].permute(1, 2, 0)
      return (out * 255.0).round().clamp(0, 255).to(self.torch.uint8).numpy()


# ------------------------------------------------------------------------------------------------
# Benchmarks


def _describe(times: list[float]) -> tuple[float, float]:
  return min(times), statistics.median(times)


def bench_inference(width: int, height: int, *, torch_model: TorchModel | None,
                    threads: list[int], repeats: int, jax_model: SepConvNet
                    ) -> dict[str, tuple[float, float]]:
  first, second = _frames(height, width)
  interpolator = Interpolator(jax_model, channel_order="RGB", padding="improved")
  plan = plan_padding(height, width, policy="improved", kernel_size=KERNEL_SIZE)
  frame0, frame1 = (pad(jnp.asarray(f, jnp.float32)[None] / 255.0, plan) for f in (first, second))
  graphdef, state = nnx.split(jax_model)
  kernel_maps = jax.jit(lambda s, a, b: nnx.merge(graphdef, s).kernel_maps(a, b))
  maps = jax.block_until_ready(kernel_maps(state, frame0, frame1))

  @jax.jit
  def apply_op(a, b, maps):
    return (local_separable_conv(a, maps.vertical0, maps.horizontal0)
            + local_separable_conv(b, maps.vertical1, maps.horizontal1))

  fns = {
      "jax end to end": lambda: interpolator(first, second),
      "jax network": lambda: jax.block_until_ready(kernel_maps(state, frame0, frame1)),
      "jax op": lambda: jax.block_until_ready(apply_op(frame0, frame1, maps)),
  }
  if torch_model is not None:
    torch = torch_model.torch
    one, two, _ = torch_model.padded_inputs(first, second)
    with torch.inference_mode():
      torch_maps = torch_model.kernel_maps(one, two)

    def with_threads(count, fn):
      def run():
        torch.set_num_threads(count)
        with torch.inference_mode():
          fn()
      return run

    for count in threads:
      fns.update({
          f"torch{count} end to end": with_threads(
              count, lambda: torch_model.interpolate(first, second)),
          f"torch{count} network": with_threads(count, lambda: torch_model.kernel_maps(one, two)),
          f"torch{count} op": with_threads(
              count, lambda: torch_model.apply_op(one, two, torch_maps)),
      })
    # Same weights, same function: the outputs agree up to float32 rounding (and uint8 ties).
    difference = np.abs(interpolator(first, second).astype(int)
                        - torch_model.interpolate(first, second).astype(int))
    print(f"  {width}x{height}: JAX vs PyTorch output, uint8: max |diff| {difference.max()}, "
          f"{np.mean(difference > 0) * 100:.3f}% of values differ", flush=True)
  times = _timed_rounds(fns, repeats)
  return {name: _describe(values) for name, values in times.items()}


def bench_training(batch: int, repeats: int, size: int = 128) -> tuple[float, float]:
  from sepconv_jax.training import losses  # pylint: disable=import-outside-toplevel
  from sepconv_jax.training import steps  # pylint: disable=import-outside-toplevel
  from sepconv_jax.training.configs import TrainConfig  # pylint: disable=import-outside-toplevel
  config = TrainConfig(model=SepConvConfig(), batch_size=batch, crop_size=size)
  graphdef, state = steps.create_train_state(config)
  step = jax.jit(functools.partial(steps.train_step, graphdef=graphdef,
                                   loss_fn=losses.get_loss("l1"),
                                   optimizer=steps.make_optimizer(config)),
                 donate_argnums=0)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  example = {name: jax.random.uniform(key, (batch, size, size, 3))
             for name, key in zip(("x0", "x1", "y"), keys)}
  state, _ = step(state, example)  # compile and warm up
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, example)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return _describe(times)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
  sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
  if any(len(size) != 2 or min(size) < 1 for size in sizes):
    raise ValueError(text)
  return sizes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="640x480,1280x720", help="WIDTHxHEIGHT[,...]")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
  parser.add_argument("--threads", default="2,1",
                      help="torch.set_num_threads settings to time, comma-separated (default 2,1)")
  parser.add_argument("--torch-op", choices=("rows", "taps"), default="rows",
                      help="PyTorch op: loop over vertical taps with in-place row sums (rows), "
                           "or the tests' 51x51 double loop (taps)")
  parser.add_argument("--skip-torch", action="store_true", help="JAX only")
  parser.add_argument("--skip-training", action="store_true")
  parser.add_argument("--batches", default="4,16", help="training batch sizes")
  args = parser.parse_args(argv)
  try:
    sizes = _parse_sizes(args.sizes)
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if min(threads) < 1 or min(batches) < 1 or args.repeats < 1:
      raise ValueError
  except ValueError:
    parser.error("--sizes WIDTHxHEIGHT[,...], --batches N[,...], --threads N[,...], --repeats N")

  shown = " ".join(argv if argv is not None else sys.argv[1:])
  print(f"command: python benchmarks/bench_model.py {shown}".rstrip())
  print(f"machine: {machine_description()}")
  print(f"load average (1, 5, 15 min) at start: {load_average()}", flush=True)

  torch_model = None
  if not args.skip_torch:
    try:
      torch_model = TorchModel(args.torch_op)
    except ImportError as error:
      print(f"PyTorch side skipped: {error} (pip install 'sepconv-jax[torch]')")
  if torch_model is not None:
    from sepconv_jax.network.convert import convert_state_dict  # pylint: disable=import-outside-toplevel
    jax_model = convert_state_dict(torch_model.state_dict())
    print(f"torch {torch_model.torch.__version__}, threads {threads}, op {args.torch_op!r}")
  else:
    threads = []
    jax_model = SepConvNet(SepConvConfig(), rngs=nnx.Rngs(0))

  rows = []
  for width, height in sizes:
    results = bench_inference(width, height, torch_model=torch_model, threads=threads,
                              repeats=args.repeats, jax_model=jax_model)
    for part in ("end to end", "network", "op"):
      torch_times = [results[f"torch{count} {part}"] for count in threads]
      rows.append((f"{width}x{height}", part, results[f"jax {part}"], torch_times))
    print(f"  {width}x{height} done; load average {load_average()}", flush=True)

  print()
  print(f"inference, seconds per interpolated frame, best / median of {args.repeats}; "
        "torch/JAX = the best PyTorch thread setting's best over JAX's best:")
  torch_columns = "".join(f"  {f'torch {t}T best/med':>18}" for t in threads)
  header = f"{'size':>9}  {'part':<10}  {'JAX best/med':>15}{torch_columns}  {'torch/JAX':>9}"
  print(header)
  print("-" * len(header))
  for size, part, (jax_best, jax_median), torch_times in rows:
    cells = "".join(f"  {f'{best:.3f} / {median:.3f}':>18}" for best, median in torch_times)
    ratio = (f"{min(best for best, _ in torch_times) / jax_best:8.2f}x" if torch_times
             else f"{'-':>9}")
    print(f"{size:>9}  {part:<10}  {f'{jax_best:.3f} / {jax_median:.3f}':>15}{cells}  {ratio}")

  if not args.skip_training:
    print()
    print(f"training step (JAX, L1, AdaMax, 128x128; best / median of {args.repeats}):")
    for batch in batches:
      best, median = bench_training(batch, args.repeats)
      print(f"  batch {batch:>3}: {best:7.3f} / {median:7.3f} s per step, "
            f"{batch / best:6.2f} examples/s; load average {load_average()}", flush=True)
  print(f"load average (1, 5, 15 min) at end: {load_average()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
