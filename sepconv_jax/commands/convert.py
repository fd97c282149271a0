"""`sepconv convert network-l1.pytorch checkpoints/sepconv-l1 [--overwrite]`: the published PyTorch
weights as a checkpoint (the work is in `sepconv_jax.network.convert`)."""

from __future__ import annotations

import sys
from typing import Sequence

from sepconv_jax.commands import OneLineParser, add_version_argument
from sepconv_jax.network.convert import PUBLISHED_CHANNEL_ORDER, ConversionError, convert_file


def main(argv: Sequence[str] | None = None, prog: str = "sepconv convert") -> int:
  parser = OneLineParser(
      prog=prog,
      description="Convert published PyTorch SepConv weights (e.g. network-l1.pytorch) into a "
                  "sepconv-jax checkpoint (BGR recorded in its metadata).")
  parser.add_argument("input", help="the .pytorch state dict")
  parser.add_argument("output", help="the checkpoint directory to write")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
  add_version_argument(parser)
  args = parser.parse_args(argv)
  try:
    path = convert_file(args.input, args.output, overwrite=args.overwrite)
  except (ConversionError, OSError) as error:
    # One line, no traceback: these are problems with the user's files, not bugs.
    print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return 1
  print(f"wrote {path} (channel order {PUBLISHED_CHANNEL_ORDER})")
  return 0
