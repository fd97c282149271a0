"""Build the training-patch cache: `sepconv prepare --source DIR [--source DIR] [--out DIR]`.

Example (the project's full run, DAVIS frames and the real clips; never ucf101_interp):
  sepconv prepare --source ../shared/data/davis_480p --source ../shared/data/videos \\
      --validation-sequences davis_480p/JPEGImages/480p/cows,davis_480p/JPEGImages/480p/drift-chicane,videos/sam2_04_coffee
(also `python -m sepconv_data.prepare`). Needs the training extra: pip install "sepconv-jax[train]".

Prints how many triplets were seen, rejected as cuts, rejected for low motion and kept (and too
small for a patch), per split, and the dataset folder. A second run with the same parameters and
sources reuses the cache. Errors (bad flags, a missing or empty source) print one line on stderr
and exit with status 2; nothing half-written is left where it would be loaded.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time

from . import extract, missing_training_packages, sources

EXIT_USAGE = 2


# Where `sepconv train` looks for the cache by default (git-ignored).
DEFAULT_OUT = "datasets/davis_tfds"


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, no usage block
    self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def _gaps(text):
  try:
    gaps = tuple(int(g) for g in text.split(","))
  except ValueError:
    gaps = ()
  if not gaps or min(gaps) < 1 or len(set(gaps)) != len(gaps):
    raise argparse.ArgumentTypeError(f"must be distinct positive integers like 1,2, got {text}")
  return gaps


def build_parser(prog: str = "sepconv prepare") -> argparse.ArgumentParser:
  defaults = extract.ExtractConfig()
  p = _Parser(prog=prog, description=__doc__.split("\n\n")[0],
              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--source", action="append", required=True, metavar="DIR",
                 help="folder of sequences (DAVIS layout, frame folders, videos); repeatable")
  p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                 help="TFDS data_dir for the cache (default: %(default)s, where sepconv train "
                      "looks)")
  p.add_argument("--patch-size", type=_positive_int, default=defaults.patch_size)
  p.add_argument("--patches-tried", type=_positive_int, default=defaults.patches_tried,
                 help="random patches tried per triplet")
  p.add_argument("--max-patches", type=_positive_int, default=defaults.max_patches,
                 help="patches kept per triplet at most")
  p.add_argument("--hist-bins", type=_positive_int, default=defaults.hist_bins,
                 help="histogram bins per RGB channel for cut detection")
  p.add_argument("--cut-threshold", type=float, default=defaults.cut_threshold,
                 help="histogram total-variation distance above which a frame pair is a cut")
  p.add_argument("--flow-scale", type=float, default=defaults.flow_scale,
                 help="mean flow (pixels, frame 1 to 3) at which a patch is always kept")
  p.add_argument("--min-flow", type=float, default=defaults.min_flow,
                 help="patches with less mean flow are never kept")
  p.add_argument("--keep-floor", type=float, default=defaults.keep_floor,
                 help="keep probability of a patch at zero flow (above --min-flow)")
  p.add_argument("--flow-downscale", type=_positive_int, default=defaults.flow_downscale)
  p.add_argument("--max-height", type=int, default=defaults.max_height,
                 help="shrink taller frames to this height; 0 keeps every frame's size")
  p.add_argument("--seed", type=int, default=defaults.seed)
  p.add_argument("--gaps", type=_gaps, default=defaults.gaps, metavar="G[,G...]",
                 help="frame gaps of the triplets (t-g, t, t+g): 1,2 adds triplets of twice the "
                      "motion")
  p.add_argument("--validation-fraction", type=float, default=0.15,
                 help="fraction of sequences (not frames) held out for validation")
  p.add_argument("--validation-sequences", default="", metavar="NAMES",
                 help="comma-separated sequence names for validation (overrides the fraction)")
  p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                 help="extraction processes (parallel over sequences)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--overwrite", action="store_true", help="rebuild an existing cache")
  # Not sepconv_jax.commands.add_version_argument: this package never imports sepconv_jax (jax).
  p.add_argument("--version", action="version",
                 version=f"%(prog)s {importlib.metadata.version('sepconv-jax')}")
  return p


def _format_counts(name: str, counts: dict) -> str:
  return (f"{name:>10}: {counts['triplets']} triplets seen, {counts['cuts']} rejected as cuts, "
          f"{counts['low_motion']} rejected for low motion, {counts['too_small']} too small, "
          f"{counts['kept']} kept ({counts['patches']} patches)")


def main(argv: list[str] | None = None, prog: str = "sepconv prepare") -> int:
  parser = build_parser(prog)
  args = parser.parse_args(argv)
  try:
    extract_config = extract.ExtractConfig(
        patch_size=args.patch_size, patches_tried=args.patches_tried,
        max_patches=args.max_patches, hist_bins=args.hist_bins, cut_threshold=args.cut_threshold,
        flow_scale=args.flow_scale, min_flow=args.min_flow, keep_floor=args.keep_floor,
        flow_downscale=args.flow_downscale, max_height=args.max_height or None, seed=args.seed,
        gaps=args.gaps)
  except ValueError as error:
    parser.error(str(error))
  for source in args.source:
    try:
      sources.discover_sequences(source)
    except sources.SourceError as error:
      parser.error(str(error))

  # TensorFlow is imported only now: spawned extraction workers re-import this module, and
  # they need OpenCV and NumPy only. TF 2.21 prints its oneDNN notice before it reads
  # TF_CPP_MIN_LOG_LEVEL; oneDNN's custom kernels do not matter for writing records.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  missing = missing_training_packages()
  if missing is not None:
    print(f"{parser.prog}: error: {missing}", file=sys.stderr)
    return 1
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from . import builder  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")  # this command never needs a GPU
  except RuntimeError:  # TensorFlow was already initialised by a caller (tests)
    pass
  tfds.disable_progress_bar()

  start = time.perf_counter()
  try:
    config = builder.make_config(
        extract_config, validation_fraction=args.validation_fraction,
        validation_sequences=tuple(n for n in args.validation_sequences.split(",") if n))
    folder, reused = builder.prepare(args.source, args.out, config, workers=args.workers,
                                     progress=not args.no_progress, overwrite=args.overwrite)
  except (ValueError, OSError, AssertionError) as error:
    # SourceError and CacheError are ValueErrors; TFDS raises AssertionError for a missing manual
    # directory. The first line of the message is the useful one.
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE
  except KeyboardInterrupt:
    print(f"{parser.prog}: interrupted; no dataset was written", file=sys.stderr)
    return 130
  seconds = time.perf_counter() - start

  metadata = builder.load_metadata_from(folder)
  counts = metadata.get("counts", {})
  print(("reused the cache at " if reused else "wrote ") + str(folder)
        + ("" if reused else f" in {seconds:.1f} s"))
  total = extract.Counts()
  for split in (builder.TRAIN, builder.VALIDATION):
    if split in counts:
      split_counts = counts[split]["total"]
      total += extract.Counts(**split_counts)
      names = metadata.get("sequences", {}).get(split, [])
      print(_format_counts(split, split_counts) + f", {len(names)} sequences")
      for name, error in counts[split].get("errors", {}).items():
        print(f"{'':>12}warning: {name}: {error}")
  if builder.VALIDATION not in counts:
    print(f"{builder.VALIDATION:>10}: none (pass several sequences or --validation-sequences; "
          "training then validates on nothing)")
  print(_format_counts("total", total.as_dict()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
