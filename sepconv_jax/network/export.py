"""Exports a trained checkpoint as a compact model for shipping (no optimizer state, float16).

  sepconv export runs/default-l1/checkpoints/2000 sepconv_jax/weights/default \\
      --dtype float16 --info '{"data": "DAVIS 480p + shared clips"}'

The source is any checkpoint `sepconv_jax.network.checkpoint.load_model` reads: a training step directory
(its optimizer state is left behind) or a model written by `save_model` / `convert`. The export
keeps the source's metadata `info` (step, loss, training config, validation scores), adds where it
came from and anything given with `--info`, and stores the parameters in `--dtype`. The export is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from sepconv_jax.network.checkpoint import load_model, save_model


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
