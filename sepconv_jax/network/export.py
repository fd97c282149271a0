"""Exports a trained checkpoint as a compact model for shipping (no optimizer state, float16).

  sepconv export runs/default-l1/checkpoints/2000 sepconv_jax/weights/default \\
      --dtype float16 --info '{"data": "DAVIS 480p + shared clips"}'

The source is any checkpoint `sepconv_jax.network.checkpoint.load_model` reads: a training step directory
(its optimizer state is left behind) or a model written by `save_model` / `convert`. The export
keeps the source's metadata `info` (step, loss, training config, validation scores), adds where it
came from and anything given with `--info`, and stores the parameters in `--dtype`. The export is
written under a temporary name and renamed when complete.

Weight-space blending (`--blend-with OTHER --blend-weight W`): the exported parameters are
(1 - W) * source + W * OTHER, leaf by leaf, computed in float32. Fine-tuning a model on new data
(here: larger crops and larger motion) tends to forget some of what it did well before; averaging
the fine-tuned weights with the ones it started from (WiSE-FT, Wortsman et al. 2022) often keeps
most of the new gain and the old skill, at no training cost. Both checkpoints must hold the same
network and expect the same channel order.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
from flax import nnx

from sepconv_jax.network.checkpoint import CheckpointError, load_model, save_model
from sepconv_jax.network.model import SepConvNet


def blend_models(first: SepConvNet, second: SepConvNet, weight: float) -> SepConvNet:
  """A network whose parameters are (1 - weight) * first's + weight * second's (same config)."""
  if first.config != second.config:
    raise CheckpointError(f"cannot blend different networks ({first.config} and "
                          f"{second.config})")
  graphdef, params = nnx.split(first)
  blended = jax.tree.map(lambda a, b: (1.0 - weight) * a + weight * b, params,
                         nnx.state(second))
  return nnx.merge(graphdef, blended)


def export_model(source: str | os.PathLike, output: str | os.PathLike, *,
                 storage_dtype: str = "float16", info: dict[str, Any] | None = None,
                 overwrite: bool = False, blend_with: str | os.PathLike | None = None,
                 blend_weight: float = 0.5) -> pathlib.Path:
  """Writes the parameters and metadata of checkpoint `source` to `output` in `storage_dtype`;
  with `blend_with`, the parameters are (1 - blend_weight) * source + blend_weight * blend_with."""
  output = pathlib.Path(output).absolute()
  if output.exists() and not overwrite:
    raise FileExistsError(f"output {output} already exists (use --overwrite to replace it)")
  if not 0.0 <= blend_weight <= 1.0:
    raise ValueError(f"the blend weight must be in [0, 1], got {blend_weight}")
  model, metadata = load_model(source)
  merged = {**metadata.get("info", {}), "exported_from": os.fspath(source)}
  if blend_with is not None:
    other, other_metadata = load_model(blend_with)
    if other_metadata["channel_order"] != metadata["channel_order"]:
      raise CheckpointError(f"cannot blend a {metadata['channel_order']} model with a "
                            f"{other_metadata['channel_order']} one ({blend_with})")
    model = blend_models(model, other, blend_weight)
    merged.update(blended_with=os.fspath(blend_with), blend_weight=blend_weight)
  merged.update(info or {})
  return save_model(output, model, channel_order=metadata["channel_order"], info=merged,
                    overwrite=overwrite, storage_dtype=storage_dtype)
