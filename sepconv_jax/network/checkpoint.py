"""Saving and loading a `SepConvNet` with the metadata needed to use it correctly.

A model checkpoint is an Orbax composite directory with two items:
  model     the NNX state (parameters) of the network, restored bit-exactly;
  metadata  JSON: the format tag, the `SepConvConfig`, the channel order the weights expect
            ("BGR" for the published weights, "RGB" for models trained here), the dtype the
            parameters are stored in ("float32", or "float16"/"bfloat16" to halve the size of
            shipped weights; `load_model` always returns float32) and free-form `info` (e.g.
            where converted weights came from).

Orbax writes into a temporary directory next to the target and renames it when the save is
complete, so a crash never leaves a half-written checkpoint under the final name.

A training checkpoint (`<workdir>/checkpoints/<step>/`, one `ocp.CheckpointManager` per run) has
the same two items, so that `load_model` reads any training step, and two more:
  optimizer  the optimizer state;
  train      step, PRNG key and the number of training batches consumed (the data position).
The manager keeps the latest few plus the best by a validation metric (`training_manager`).
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from flax import nnx

from sepconv_jax.network.model import SepConvConfig, SepConvNet

FORMAT = "sepconv-jax/1"
CHANNEL_ORDERS = ("RGB", "BGR")
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
MODEL_ITEM = "model"
METADATA_ITEM = "metadata"
OPTIMIZER_ITEM = "optimizer"
TRAIN_ITEM = "train"
TRAINING_ITEMS = (MODEL_ITEM, METADATA_ITEM, OPTIMIZER_ITEM, TRAIN_ITEM)


class CheckpointError(Exception):
  """A checkpoint is missing, unreadable or not one of this project's."""


def _checkpointer() -> ocp.Checkpointer:
  # Synchronous: the caller can rely on the directory being complete when `save_model` returns.
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def make_metadata(config: SepConvConfig, *, channel_order: str,
                  info: dict[str, Any] | None = None,
                  storage_dtype: str = "float32") -> dict[str, Any]:
  """The JSON metadata stored next to the parameters."""
  if channel_order not in CHANNEL_ORDERS:
    raise ValueError(f"{channel_order=} must be one of {CHANNEL_ORDERS}")
  if storage_dtype not in STORAGE_DTYPES:
    raise ValueError(f"{storage_dtype=} must be one of {STORAGE_DTYPES}")
  return {"format": FORMAT, "config": config.to_dict(), "channel_order": channel_order,
          "storage_dtype": storage_dtype, "info": dict(info or {})}


def save_model(path: str | os.PathLike, model: SepConvNet, *, channel_order: str = "RGB",
               info: dict[str, Any] | None = None, overwrite: bool = False,
               storage_dtype: str = "float32") -> pathlib.Path:
  """Saves `model` and its metadata to the directory `path` (absolute path returned).

  Args:
    channel_order: The order of the colour channels the weights expect ("RGB" or "BGR").
    info: Free-form JSON-serialisable facts to keep with the weights (source, step, scores).
    overwrite: Replace an existing checkpoint at `path`; otherwise that is an error.
    storage_dtype: Dtype of the parameters on disk (`STORAGE_DTYPES`); "float16" halves the size
      (21.7M parameters: 43 MB instead of 87 MB) and rounds each weight to 11 significant bits.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
  metadata = make_metadata(model.config, channel_order=channel_order, info=info,
                           storage_dtype=storage_dtype)
  state = jax.tree.map(lambda leaf: leaf.astype(storage_dtype), nnx.state(model))
  _checkpointer().save(
      path,
      args=ocp.args.Composite(**{
          MODEL_ITEM: ocp.args.StandardSave(state),
          METADATA_ITEM: ocp.args.JsonSave(metadata),
      }),
      force=overwrite)
  return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The metadata of the checkpoint at `path`, without loading the parameters."""
  path = pathlib.Path(path).absolute()
  if not path.is_dir():
    raise CheckpointError(f"no checkpoint directory at {path}")
  try:
    restored = _checkpointer().restore(
        path, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
    metadata = restored[METADATA_ITEM]
  except Exception as error:  # Orbax raises a variety of types for unreadable directories.
    raise CheckpointError(f"cannot read checkpoint metadata at {path}: {error}") from error
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (metadata: {metadata!r:.200})")
  return metadata


def recommended_align(metadata: dict[str, Any]) -> float:
  """The pre-alignment strength a model is meant to run with (`sepconv_jax.inference.alignment`):
  its metadata's `info["align"]` when set (`sepconv export --info '{"align": 0.5}'`), else the
  strength it was trained with (`TrainConfig.prealign`), else 0 (the network alone)."""
  info = metadata.get("info") or {}
  if "align" in info:
    return float(info["align"])
  return float((info.get("train_config") or {}).get("prealign", 0.0))


def recommended_consensus(metadata: dict[str, Any]) -> float:
  """The consensus weight a model is meant to run with (`sepconv_jax.inference.alignment.
  blend_consensus`): its metadata's `info["consensus"]` when set (`sepconv export --info
  '{"consensus": 0.75}'`), else 0 (the network's frame as it is)."""
  return float((metadata.get("info") or {}).get("consensus", 0.0))


def abstract_model(config: SepConvConfig) -> SepConvNet:
  """A model of `config` whose parameters are shapes only (nothing allocated or initialised)."""
  return nnx.eval_shape(lambda: SepConvNet(config, rngs=nnx.Rngs(0)))


def load_model(path: str | os.PathLike) -> tuple[SepConvNet, dict[str, Any]]:
  """Loads a checkpoint written by `save_model`; returns (model, metadata).

  `metadata["channel_order"]` says which channel order the model's frames must be in. Parameters
  stored in a narrower dtype come back as the network's own (float32).
  """
  path = pathlib.Path(path).absolute()
  metadata = read_metadata(path)
  config = SepConvConfig.from_dict(metadata["config"])
  # Older checkpoints (and training steps) have no storage_dtype: they are float32.
  storage_dtype = metadata.get("storage_dtype", "float32")
  if storage_dtype not in STORAGE_DTYPES:
    raise CheckpointError(f"{path}: unknown storage dtype {storage_dtype!r}")
  graphdef, abstract_state = nnx.split(abstract_model(config))
  # Restore onto the default device, whatever the machine that saved it used.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, storage_dtype, sharding=sharding),
      abstract_state)
  try:
    restored = _checkpointer().restore(
        path, args=ocp.args.Composite(**{MODEL_ITEM: ocp.args.StandardRestore(target)}))
  except Exception as error:
    raise CheckpointError(f"cannot restore model parameters from {path}: {error}") from error
  params = jax.tree.map(lambda stored, leaf: stored.astype(leaf.dtype), restored[MODEL_ITEM],
                        abstract_state)
  return nnx.merge(graphdef, params), metadata


# ------------------------------------------------------------------------------------------------
# Training checkpoints

# Orbax warns at every save without validation scores (mid-epoch saves) that a best-checkpoint
# metric was asked for: those saves are kept by the LatestN policy on purpose.
logging.getLogger("absl").addFilter(
    lambda record: "did not provide metrics" not in record.getMessage())


def training_manager(directory: str | os.PathLike, keep: int, *, best_metrics: Sequence[str],
                     read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of a run's checkpoints: the latest `keep` plus the best one by the first of
  `best_metrics` that a checkpoint's metrics hold (higher is better)."""
  best_fn = lambda metrics: next(metrics[k] for k in best_metrics if k in metrics)
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      # Ascending sort, the last n kept: the highest score. Checkpoints without validation scores
      # (mid-epoch saves) are left to LatestN.
      ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=False, n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode="max", preservation_policy=policy, create=not read_only,
      read_only=read_only, enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=TRAINING_ITEMS,
                               options=options)


def save_training_step(manager: ocp.CheckpointManager, step: int, *, params, opt_state, train,
                       metadata: dict[str, Any], metrics: dict[str, float] | None) -> None:
  """Writes step `step` (synchronously): `train` is the pytree of the "train" item."""
  manager.save(step, args=ocp.args.Composite(**{
      MODEL_ITEM: ocp.args.StandardSave(params),
      METADATA_ITEM: ocp.args.JsonSave(metadata),
      OPTIMIZER_ITEM: ocp.args.StandardSave(opt_state),
      TRAIN_ITEM: ocp.args.StandardSave(train),
  }), metrics=metrics, force=True)


def restore_training_step(manager: ocp.CheckpointManager, step: int, *, params, opt_state, train
                          ) -> tuple[Any, Any, Any]:
  """(params, optimizer state, train item) of `step`, laid out like the given abstract trees
  (`jax.ShapeDtypeStruct`s with their shardings)."""
  restored = manager.restore(step, args=ocp.args.Composite(**{
      MODEL_ITEM: ocp.args.StandardRestore(params),
      OPTIMIZER_ITEM: ocp.args.StandardRestore(opt_state),
      TRAIN_ITEM: ocp.args.StandardRestore(train),
  }))
  return restored[MODEL_ITEM], restored[OPTIMIZER_ITEM], restored[TRAIN_ITEM]
