"""Throughput of the training input pipeline (data.pipeline.train_dataset), in batches per second.

  python benchmarks/bench_data_pipeline.py --data-dir datasets/davis_tfds
  python benchmarks/bench_data_pipeline.py                 # a small synthetic cache, made here
  python benchmarks/bench_data_pipeline.py --data-dir DIR --train-step-s 7.6

Prints batches/s for the given batch size and crop (default 16 at 128x128) with the pipeline's
thread budget (default 2, the whole of this project's reference machine), and, when the training
step time is given (`--train-step-s`, seconds per step at the same batch size, measured by the
training code), how many times faster the pipeline is than the model consumes. The target is at
least 10 batches/s on 2 cores. No jax import: this measures the pipeline alone.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

TARGET_BATCHES_PER_S = 10.0


def make_synthetic_source(root: pathlib.Path, *, sequences: int = 4, frames: int = 8,
                          height: int = 240, width: int = 320, seed: int = 0) -> pathlib.Path:
  """Frame folders of a smooth random texture panning 6 px per frame (every triplet moves)."""
  rng = np.random.default_rng(seed)
  for s in range(sequences):
    texture = cv2.GaussianBlur(rng.integers(0, 256, (height + 64, width + 8 * frames, 3),
                                            dtype=np.uint8), (5, 5), 0)
    folder = root / f"synthetic_{s}"
    folder.mkdir(parents=True)
    for f in range(frames):
      frame = texture[32:32 + height, 6 * f:6 * f + width]
      cv2.imwrite(str(folder / f"{f:05d}.png"), frame)
  return root


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data-dir", help="prepared cache (sepconv prepare --out DIR); "
                      "default: a synthetic cache made in a temporary folder")
  parser.add_argument("--config", help="cache config name, if the data dir holds several")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--crop-size", type=int, default=128)
  parser.add_argument("--threads", type=int, default=2, help="tf.data thread budget")
  parser.add_argument("--shuffle-buffer", type=int, default=1024)
  parser.add_argument("--warmup", type=int, default=20, help="batches before timing")
  parser.add_argument("--batches", type=int, default=300, help="batches timed")
  parser.add_argument("--train-step-s", type=float, default=None,
                      help="seconds per training step at this batch size, to compare with")
  args = parser.parse_args(argv)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  tfds.disable_progress_bar()
  from sepconv_data import builder, pipeline  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
    data_dir = args.data_dir
    if data_dir is None:
      source = make_synthetic_source(pathlib.Path(tmp) / "synthetic")
      data_dir = str(pathlib.Path(tmp) / "cache")
      builder.prepare([source], data_dir, builder.make_config(validation_fraction=0.25),
                      workers=1, progress=False)
      print(f"synthetic cache: {data_dir}")
    cache = builder.load_builder(data_dir, args.config)
    examples = cache.info.splits[builder.TRAIN].num_examples
    dataset = pipeline.train_dataset(data_dir, batch_size=args.batch_size,
                                     crop_size=args.crop_size, threads=args.threads,
                                     shuffle_buffer=args.shuffle_buffer, config=args.config)
    iterator = iter(dataset)
    for _ in range(args.warmup):
      batch = next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
      batch = next(iterator)
    seconds = time.perf_counter() - start

  rate = args.batches / seconds
  shape = "x".join(map(str, batch["y"].shape))
  print(f"cache: {cache.data_dir} ({examples} training examples)")
  print(f"pipeline: {rate:.1f} batches/s ({rate * args.batch_size:.0f} examples/s), batch {shape}, "
        f"{args.threads} threads, {os.cpu_count()} cores; target >= {TARGET_BATCHES_PER_S:g}: "
        + ("met" if rate >= TARGET_BATCHES_PER_S else "NOT met"))
  if args.train_step_s:
    print(f"training step: {args.train_step_s:.3f} s ({1 / args.train_step_s:.2f} batches/s); "
          f"the pipeline is {rate * args.train_step_s:.0f}x faster than the model consumes")
  else:
    print("training step: not given (pass --train-step-s SECONDS from the training code)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
