"""The `sepconv` command (also `python -m sepconv_jax`): one entry point, a subcommand per job.

  sepconv interpolate --pair a.png b.png --out mid.png    sepconv_jax.commands.interpolate
  sepconv train --data DIR --workdir DIR                  sepconv_jax.commands.train
  sepconv benchmark --dataset ucf101 --root DIR           sepconv_jax.commands.benchmark
  sepconv convert network-l1.pytorch ckpt/                sepconv_jax.network.convert
  sepconv export runs/x/checkpoints/STEP model/           sepconv_jax.network.export
  sepconv prepare --source DIR --out DIR                  sepconv_data.prepare

Each subcommand module has `main(argv, prog) -> exit status` and answers `--help` and `--version`.
This module imports only the standard library until a subcommand is chosen, so that `sepconv
--help` and usage errors answer at once; each subcommand imports jax only once its arguments are
known to be good.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from typing import Sequence

PROG = "sepconv"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# name: (module, one-line summary), in the order a user meets them.
SUBCOMMANDS = {
    "interpolate": ("sepconv_jax.commands.interpolate",
                    "the frames between two images, in a frame folder or in a video"),
    "benchmark": ("sepconv_jax.commands.benchmark",
                  "quality (PSNR, SSIM) on UCF101, Middlebury, DAVIS or a video"),
    "prepare": ("sepconv_data.prepare",
                "build the training-patch cache from DAVIS-style folders and videos"),
    "train": ("sepconv_jax.commands.train", "train a model on a prepared cache"),
    "export": ("sepconv_jax.commands.export",
               "a checkpoint as a compact model (float16 parameters)"),
    "convert": ("sepconv_jax.commands.convert",
                "published PyTorch SepConv weights as a checkpoint"),
}


def version() -> str:
  """The installed distribution's version (pyproject.toml's `version`)."""
  try:
    return importlib.metadata.version("sepconv-jax")
  except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
    return "unknown (not installed)"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


class OneLineParser(argparse.ArgumentParser):
  """Usage errors as one `PROG: error: ... (see --help)` line and exit status 2, no usage block."""

  def error(self, message):
    self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def unit_interval(text: str) -> float:
  """argparse type: a number in [0, 1]."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
  if not 0.0 <= value <= 1.0:
    raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
  return value


def unit_interval_or_auto(text: str) -> float | None:
  """argparse type: "auto" (None, the model's own recommendation) or a number in [0, 1]."""
  return None if text == "auto" else unit_interval(text)


def add_alignment_arguments(parser: argparse.ArgumentParser) -> None:
  """`--align S|auto` (the pre-alignment strength of `sepconv_jax.inference.alignment`) and
  `--consensus W|auto` (its `blend_consensus` weight); "auto" (the default) parses to None, the
  model's own recommendation."""
  parser.add_argument("--align", type=unit_interval_or_auto, default=None, metavar="S",
                      help="warp both frames S (0 to 1) of the way to the middle along classical "
                           "optical flow (OpenCV DIS) before the network; 0 runs the network "
                           "alone (default: auto, the model's own: 0.5 for the default model, S "
                           "for one trained with --prealign S, else 0)")
  parser.add_argument("--consensus", type=unit_interval_or_auto, default=None, metavar="W",
                      help="after the network, blend in the mean of both frames warped all the "
                           "way to the middle along the same flow, at most W (0 to 1) of it, "
                           "where they agree with each other and with the network; 0 never "
                           "blends (default: auto, the model's own: 0.75 for the default model, "
                           "else 0)")


def positive(kind: type = int):
  """argparse type: a `kind` number above 0."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
    if value <= 0:
      raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
  return parse


def at_least(minimum: int):
  """argparse type: an integer of at least `minimum`."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
    return value
  return parse


def _usage() -> str:
  width = max(map(len, SUBCOMMANDS))
  lines = [f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)",
           "", "SepConv video frame interpolation.", "", "commands:"]
  lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
  lines += ["", "options:", "  -h, --help  this message", "  --version   the version"]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv:
    print(_usage(), file=sys.stderr)
    return EXIT_USAGE
  name, rest = argv[0], argv[1:]
  if name in ("-h", "--help"):
    print(_usage())
    return 0
  if name == "--version":
    print(f"{PROG} {version()}")
    return 0
  if name not in SUBCOMMANDS:
    print(f"{PROG}: error: unknown command {name!r} (choose from {', '.join(SUBCOMMANDS)}; "
          f"see {PROG} --help)", file=sys.stderr)
    return EXIT_USAGE
  try:
    module = importlib.import_module(SUBCOMMANDS[name][0])
  except KeyboardInterrupt:  # Ctrl-C while the imports run: nothing has been done yet
    print("error: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
  return module.main(rest, prog=f"{PROG} {name}")
