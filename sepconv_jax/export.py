"""Exports a trained checkpoint as a compact model for shipping (no optimizer state, float16).

  sepconv export runs/default-l1/checkpoints/2000 sepconv_jax/weights/default \\
      --dtype float16 --info '{"data": "DAVIS 480p + shared clips"}'

The source is any checkpoint `sepconv_jax.checkpoint.load_model` reads: a training step directory
(its optimizer state is left behind) or a model written by `save_model` / `convert`. The export
keeps the source's metadata `info` (step, loss, training config, validation scores), adds where it
came from and anything given with `--info`, and stores the parameters in `--dtype`. The export is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any, Sequence

from sepconv_jax.checkpoint import STORAGE_DTYPES, CheckpointError, load_model, save_model
from sepconv_jax.commands import add_version_argument


def export_model(source: str | os.PathLike, output: str | os.PathLike, *,
                 storage_dtype: str = "float16", info: dict[str, Any] | None = None,
                 overwrite: bool = False) -> pathlib.Path:
  """Writes the parameters and metadata of checkpoint `source` to `output` in `storage_dtype`."""
  output = pathlib.Path(output).absolute()
  if output.exists() and not overwrite:
    raise FileExistsError(f"output {output} already exists (use --overwrite to replace it)")
  model, metadata = load_model(source)
  merged = {**metadata.get("info", {}), "exported_from": os.fspath(source), **(info or {})}
  return save_model(output, model, channel_order=metadata["channel_order"], info=merged,
                    overwrite=overwrite, storage_dtype=storage_dtype)


def _json_object(text: str) -> dict[str, Any]:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as error:
    raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
  if not isinstance(value, dict):
    raise argparse.ArgumentTypeError("must be a JSON object ({...})")
  return value


def main(argv: Sequence[str] | None = None, prog: str = "sepconv export") -> int:
  parser = argparse.ArgumentParser(
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
  parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
  add_version_argument(parser)
  args = parser.parse_args(argv)
  try:
    path = export_model(args.source, args.output, storage_dtype=args.dtype, info=args.info,
                        overwrite=args.overwrite)
  except (CheckpointError, OSError) as error:
    print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return 1
  size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
  print(f"wrote {path} ({args.dtype}, {size / 1e6:.1f} MB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
