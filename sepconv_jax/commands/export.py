"""`sepconv export CHECKPOINT OUT [--dtype float16] [--info JSON] [--blend-with OTHER
[--blend-weight W]]`: a checkpoint (or a blend of two) as a compact model (the work is in
`sepconv_jax.network.export`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from sepconv_jax.commands import OneLineParser, add_version_argument, unit_interval
from sepconv_jax.network.checkpoint import STORAGE_DTYPES, CheckpointError
from sepconv_jax.network.export import export_model


def _json_object(text: str) -> dict[str, Any]:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as error:
    raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
  if not isinstance(value, dict):
    raise argparse.ArgumentTypeError("must be a JSON object ({...})")
  return value


def main(argv: Sequence[str] | None = None, prog: str = "sepconv export") -> int:
  parser = OneLineParser(
      prog=prog,
      description="Export a checkpoint (e.g. a training step) as a compact model: parameters and "
                  "metadata only, in a narrower storage dtype.")
  parser.add_argument("source", help="checkpoint directory (training step or saved model)")
  parser.add_argument("output", help="model directory to write")
  parser.add_argument("--dtype", choices=STORAGE_DTYPES, default="float16",
                      help="storage dtype of the parameters (default float16; loading always "
                           "gives float32)")
  parser.add_argument("--info", type=_json_object, default={}, metavar="JSON",
                      help="extra facts to record in the metadata, as a JSON object")
  parser.add_argument("--blend-with", metavar="CHECKPOINT",
                      help="export (1 - W) * SOURCE + W * CHECKPOINT, parameter by parameter "
                           "(weight-space ensembling, e.g. a fine-tuned step with the model it "
                           "started from)")
  parser.add_argument("--blend-weight", type=unit_interval, metavar="W",
                      help="W of --blend-with, in [0, 1] (default 0.5)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  add_version_argument(parser)
  args = parser.parse_args(argv)
  if args.blend_weight is not None and args.blend_with is None:
    parser.error("--blend-weight needs --blend-with")
  blend_weight = 0.5 if args.blend_weight is None else args.blend_weight
  try:
    path = export_model(args.source, args.output, storage_dtype=args.dtype, info=args.info,
                        overwrite=args.overwrite, blend_with=args.blend_with,
                        blend_weight=blend_weight)
  except (CheckpointError, OSError) as error:
    print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return 1
  size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
  blend = (f", {1 - blend_weight:g} x {args.source} + {blend_weight:g} x "
           f"{args.blend_with}" if args.blend_with else "")
  print(f"wrote {path} ({args.dtype}, {size / 1e6:.1f} MB{blend})")
  return 0
