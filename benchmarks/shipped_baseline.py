"""The baseline of `bench_compute.py`: the network, the `cpu` train step and `Interpolator.default()`
timed with the project's code as it was at an earlier commit (the "shipped" path), in its own
process with glibc's default malloc. Prints one JSON line of tables like bench_compute's.

    python benchmarks/shipped_baseline.py --code DIR --part network|train|e2e [--repeats N]

`--code` is a checkout of that commit (`bench_compute.py --baseline-rev REV` makes one with `git
archive`). Only API that every version since the first shipped model has is used: `kernel_maps(a,
b)`, `train_step(...)` and `Interpolator.default()` without compute options.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import pathlib
import statistics
import sys
import time


def _time(fn, repeats: int) -> list[float]:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return [min(times), statistics.median(times)]


def _module(code: str, *names: str):
  """The first of `names` (one module under its names in successive layouts of the package) that
  imports from the checkout `code`. An editable install of the current code sits on
  `sys.meta_path` and would otherwise answer for modules the old checkout does not have."""
  root = pathlib.Path(code).resolve()
  for name in names:
    try:
      module = importlib.import_module(name)
    except ImportError:
      continue
    if root in pathlib.Path(module.__file__).resolve().parents:
      return module
  raise ImportError(f"none of {names} imports from {code}")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--code", required=True, help="checkout whose code is timed")
  parser.add_argument("--part", required=True, choices=("network", "train", "e2e"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--titles", required=True, help="JSON list of the table titles to fill")
  args = parser.parse_args()
  sys.path.insert(0, args.code)
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks.bench_model import _frames  # the checkout's own  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  titles = json.loads(args.titles)
  results = {}
  if args.part == "network":
    model = _module(args.code, "sepconv_jax.model", "sepconv_jax.network.model")
    SepConvConfig, SepConvNet = model.SepConvConfig, model.SepConvNet  # pylint: disable=invalid-name
    graphdef, state = nnx.split(SepConvNet(SepConvConfig(), rngs=nnx.Rngs(0)))
    frames = [jnp.asarray(f[None], jnp.float32) / 255.0 for f in _frames(512, 640)]
    fn = jax.jit(lambda s, a, b: nnx.merge(graphdef, s).kernel_maps(a, b))
    results[titles[0]] = _time(lambda: jax.block_until_ready(fn(state, *frames)), args.repeats)
  elif args.part == "train":
    losses = _module(args.code, "sepconv_jax.losses", "sepconv_jax.training.losses")
    steps = _module(args.code, "sepconv_jax.training.steps", "sepconv_jax.training")
    get_config = _module(args.code, "sepconv_jax.configs",
                         "sepconv_jax.training.configs").get_config
    config = get_config("cpu")
    graphdef, state = steps.create_train_state(config)
    keys = jax.random.split(jax.random.key(1), 3)
    shape = (config.batch_size, config.crop_size, config.crop_size, 3)
    batch = {name: jax.random.uniform(key, shape) for name, key in zip(("x0", "x1", "y"), keys)}
    step = jax.jit(functools.partial(steps.train_step, graphdef=graphdef,
                                     loss_fn=losses.get_loss(config.loss),
                                     optimizer=steps.make_optimizer(config)),
                   donate_argnums=0)
    holder = [state]

    def run():
      holder[0], metrics = step(holder[0], batch)
      jax.block_until_ready((holder[0], metrics))
    results[titles[0]] = _time(run, args.repeats)
  else:
    interpolator = _module(args.code, "sepconv_jax.interpolator",
                           "sepconv_jax.inference.interpolator").Interpolator.default()
    for title, (width, height) in zip(titles, ((640, 480), (1280, 720))):
      first, second = _frames(height, width)
      results[title] = _time(lambda: interpolator(first, second), args.repeats)
  print(json.dumps(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
