"""The training loop: `train` (data, checkpoints, validation, TensorBoard, images, progress bar)
around the pure steps of `sepconv_jax.training.steps`.

Checkpoints. `<workdir>/checkpoints/<step>/` is written by one `ocp.CheckpointManager`, with items
  model      the parameters (their moving average with `TrainConfig.ema_decay`): the same item
             as `sepconv_jax.save_model`, so `sepconv_jax.load_model(<workdir>/checkpoints/<step>)`
             (and the Interpolator) loads any step directory;
  metadata   JSON: config, channel order ("RGB"), and in `info` the step, loss, the whole
             `TrainConfig` and the validation scores;
  optimizer  the AdaMax state;
  train      step, PRNG key and the number of training batches consumed (the data position);
             with a moving average, also the raw parameters ("online_params") it follows.
Saves happen every `checkpoint_every` steps, at each epoch end (with the validation scores as
the checkpoint's metrics) and at the last step; the latest `keep_checkpoints` are kept and, in
addition, the best by validation PSNR. Saves are synchronous and Orbax writes each into a
temporary directory renamed into place when complete (and removes leftover temporary
directories when the manager opens), so a run killed at any moment leaves only complete
checkpoints under step names.

Resume. `train(..., resume=True)` restores the latest checkpoint (parameters, optimizer state,
step, key) bit-exactly and skips the training batches already consumed: the input pipeline
(`sepconv_data.pipeline.train_dataset`) is a pure function of its seed and position, so the resumed run
sees exactly the batches the uninterrupted run would have seen and, on CPU, ends with the same
parameters bit for bit. Skipping re-runs the cheap per-example augmentation of the skipped
batches; checkpointing the tf.data iterator instead would store the 1024-example shuffle buffer
(about 200 MB of raw patches) in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import pathlib
import resource
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from sepconv_jax.evaluation import datasets, kernels as kernel_stats, runner, scoring
from sepconv_jax.inference import alignment
from sepconv_jax.network import checkpoint as checkpoint_lib
from sepconv_jax.network.model import ConvOptions, with_captured_frames
from sepconv_jax.network.padding import run_padded
from sepconv_jax.training import losses, metrics as metrics_lib
from sepconv_jax.training.configs import TrainConfig
from sepconv_jax.training.steps import (NonFiniteLossError, TrainingError, TrainState,
                                        create_train_state, jit_options, learning_rate_schedule,
                                        make_eval_step, make_mesh, make_optimizer,
                                        make_train_step, replicate, shard_batch)

CHECKPOINT_DIR = "checkpoints"
# Checkpoints are ranked by the full-frame validation PSNR where the run has one, else by the PSNR
# on validation crops.
BEST_METRICS = ("full_psnr", "psnr")
CHANNEL_ORDER = "RGB"  # sepconv_data.pipeline delivers RGB
SAMPLE_PADDING = "improved"

# Fields that may change between a run and its --resume without changing what is computed (the
# compute precision changes only the rounding of the convolutions' operands, not the state: a
# run may resume on a machine with another default precision; bit-exact resumes need the same).
RESUMABLE_CHANGES = frozenset({"epochs", "steps", "checkpoint_every", "keep_checkpoints",
                               "log_every", "num_samples", "data_threads", "validation_batches",
                               "data_dir", "precision", "full_validation",
                               "full_validation_gap"})

# The config fields that define the learning rate (`learning_rate_schedule`'s parameters).
_SCHEDULE_FIELDS = ("learning_rate", "warmup_steps", "decay_start", "decay_end",
                    "final_learning_rate")

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(directory: str | os.PathLike, keep: int = 3, *, read_only: bool = False):
  """The manager of `<workdir>/checkpoints`: latest `keep` plus the best by `BEST_METRICS`."""
  return checkpoint_lib.training_manager(directory, keep, best_metrics=BEST_METRICS,
                                         read_only=read_only)


def save_checkpoint(manager, state: TrainState, config: TrainConfig, *,
                    validation: dict[str, float] | None = None) -> int:
  step = int(state.step)
  metadata = checkpoint_lib.make_metadata(config.model, channel_order=CHANNEL_ORDER, info={
      "step": step, "loss": config.loss, "train_config": config.to_dict(),
      "validation": validation})
  checkpoint_lib.save_training_step(
      manager, step, params=state.model_params, opt_state=state.opt_state,
      train=_train_item(state), metadata=metadata, metrics=validation)
  return step


def _train_item(state: TrainState) -> dict:
  """The checkpoint's "train" item: the data position and key, and with a moving average (which
  is the "model" item then) the raw parameters the optimizer continues from."""
  item = {"step": state.step, "rng": state.rng, "batches_consumed": state.step}
  if state.ema_params is not None:
    item["online_params"] = state.params
  return item


def restore_checkpoint(manager, step: int, template: TrainState, mesh: jax.sharding.Mesh
                       ) -> TrainState:
  """The state saved at `step`, laid out like `template` and replicated over `mesh`."""
  sharding = NamedSharding(mesh, P())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          template)
  model, opt_state, train = checkpoint_lib.restore_training_step(
      manager, step, params=abstract.model_params, opt_state=abstract.opt_state,
      train=_train_item(abstract))
  if int(train["batches_consumed"]) != int(train["step"]):
    raise TrainingError(f"checkpoint {step} has an unexpected data position")
  if template.ema_params is None:
    return TrainState(step=train["step"], params=model, opt_state=opt_state, rng=train["rng"])
  return TrainState(step=train["step"], params=train["online_params"], opt_state=opt_state,
                    rng=train["rng"], ema_params=model)


@functools.lru_cache(maxsize=16)
def _step_functions(graphdef: nnx.GraphDef, loss_fn: losses.Loss, optimizer, mesh,
                    conv: ConvOptions, centroid: tuple[float, int | None] | None,
                    ema_decay: float | None):
  """(train step, eval step), cached so that runs of one configuration in a process (tests,
  sweeps) compile them once (`make_optimizer` gives one optimizer object per setting)."""
  return (make_train_step(graphdef, loss_fn, optimizer, mesh, conv, centroid, ema_decay),
          make_eval_step(graphdef, mesh, conv))


def _centroid_settings(config: TrainConfig) -> tuple[float, int | None] | None:
  return (config.centroid_weight, config.centroid_steps) if config.centroid_weight else None


# ------------------------------------------------------------------------------------------------
# The loop (I/O)


@dataclasses.dataclass
class TrainResult:
  step: int
  workdir: pathlib.Path
  history: list[tuple[int, float]]  # (step, training loss) for every step run here
  validation: dict[int, dict[str, float]]
  best_step: int | None
  latest_step: int | None
  step_time_s: float | None  # median seconds per step after the first (compile) step
  first_step_s: float | None
  peak_rss_mb: float

  def checkpoint(self, step: int | None = None) -> pathlib.Path:
    step = self.latest_step if step is None else step
    return self.workdir / CHECKPOINT_DIR / str(step)


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _check_resume_config(workdir: pathlib.Path, config: TrainConfig, step: int) -> None:
  """Refuses to resume (at `step`) with a configuration that computes something else than the
  stored run's did. The learning-rate schedule may change (e.g. to add a decay) as long as it
  gives the same rate at every step already taken."""
  path = workdir / "config.json"
  if not path.exists():
    return
  current = config.to_dict()
  # Fields newer than the stored run read as their defaults (what that run computed with).
  stored = {**TrainConfig().to_dict(), **json.loads(path.read_text())}
  changed = sorted(k for k in set(stored) | set(current)
                   if k not in RESUMABLE_CHANGES.union(_SCHEDULE_FIELDS)
                   and stored.get(k) != current.get(k))
  if changed:
    raise TrainingError(f"--resume with a different configuration ({', '.join(changed)} differ "
                        f"from {path}); start a new --workdir or use --init-from")
  before, after = (learning_rate_schedule(**{k: fields[k] for k in _SCHEDULE_FIELDS})
                   for fields in (stored, current))
  if callable(before) != callable(after):  # the optimizer state would differ in structure
    raise TrainingError(f"--resume cannot switch between a constant learning rate and a "
                        f"schedule (warm-up or decay; {path}); use --init-from")
  taken = jnp.arange(step)
  rates = [np.broadcast_to(f(taken) if callable(f) else f, (step,)) for f in (before, after)]
  differs = np.flatnonzero(rates[0] != rates[1])
  if differs.size:
    raise TrainingError(f"--resume with a learning-rate schedule that differs from {path}'s at "
                        f"step {differs[0]}, which is already taken; change only later steps")


# The alternate crops' data order: a seed of its own, so that their patches are not the main
# steps' patches in the same order.
ALTERNATE_SEED_OFFSET = 1_000_003


def _train_batches(config: TrainConfig, data: _Data):
  """The training batches (`sepconv_data.pipeline.train_dataset`), alternating with the
  alternate crops' batches when `config.alternate_crop_size` is set."""
  from sepconv_data import pipeline  # pylint: disable=import-outside-toplevel
  common = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                shuffle_buffer=config.shuffle_buffer, threads=config.data_threads,
                flows=bool(config.centroid_weight or config.motion_weight),
                max_flow=config.max_flow,
                synthetic_objects=config.synthetic_objects,
                all_orientations=config.all_orientations,
                channel_permutation=config.channel_permutation, prealign=config.prealign,
                keep_captured=config.model.reads_captured_frames,
                object_flows_only=config.centroid_flows == "objects")
  dataset = pipeline.train_dataset(
      data.data_dir, batch_size=data.local_batch, crop_size=config.crop_size, seed=config.seed,
      min_scale=config.min_scale, **common)
  if config.alternate_crop_size is None:
    return dataset
  alternate = pipeline.train_dataset(
      data.data_dir, batch_size=config.alternate_batch_size // jax.process_count(),
      crop_size=config.alternate_crop_size, seed=config.seed + ALTERNATE_SEED_OFFSET,
      min_scale=config.alternate_min_scale, min_flow=config.alternate_min_flow, **common)
  return pipeline.alternate(dataset, alternate)


def _validation_batches(config: TrainConfig, data_dir: str, local_batch: int
                        ) -> Iterator[dict[str, np.ndarray]]:
  from sepconv_data import pipeline  # pylint: disable=import-outside-toplevel
  many_hosts = jax.process_count() > 1
  dataset = pipeline.validation_dataset(
      data_dir, batch_size=local_batch, crop_size=config.crop_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      threads=config.data_threads, prealign=config.prealign,
      keep_captured=config.model.reads_captured_frames,
      # Several hosts must run the same number of (collective) eval steps: equal shares.
      drop_remainder=many_hosts)
  if config.validation_batches is not None:
    dataset = dataset.take(config.validation_batches)
  for batch in dataset.as_numpy_iterator():
    size = batch["y"].shape[0]
    padded = {k: np.concatenate([v, np.zeros((local_batch - size,) + v.shape[1:], v.dtype)])
              for k, v in batch.items()}
    padded["mask"] = (np.arange(local_batch) < size).astype(np.float32)
    yield padded


def _validation_frames(data_dir: str, count: int, *, gap: int = 1,
                       every: int = datasets.DAVIS_EVERY
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Up to `count` full-frame triplets (x0, y, x1, RGB uint8) from the validation sequences.

  The cache records its source folders and which sequences went to validation; frames
  (n - gap, n, n + gap) every `every` frames are read from there, taking the sequences in turn
  (each one's first triplet, then each one's second, ...). Without the sources (moved, another
  machine) the list is empty.
  """
  if count == 0:
    return []
  from sepconv_data import builder, sources  # pylint: disable=import-outside-toplevel
  per_sequence = []
  try:
    metadata = builder.load_metadata(data_dir)
    wanted = list(metadata.get("sequences", {}).get("validation", []))
    max_height = metadata.get("parameters", {}).get("extract", {}).get("max_height")
    found = {}
    for root in metadata.get("source_dirs", []):
      for sequence in sources.discover_sequences(root):
        found[f"{pathlib.Path(root).name}/{sequence.name}"] = sequence
    for name in wanted:
      sequence = sources.find_sequence(found, name)
      if sequence is not None:
        frames = sources.iter_frames(sequence, max_height=max_height)
        triplets = [(t.first, t.truth, t.second) for t in datasets.frame_triplets(
            frames, name, every, gap)]
        per_sequence.append(triplets[:count])
  except (OSError, ValueError, KeyError) as error:
    log.warning("full validation frames unavailable (%s)", error)
  interleaved = [t for group in itertools.zip_longest(*per_sequence) for t in group if t]
  return interleaved[:count]


def _sample_triplets(data_dir: str, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The first triplet of each of up to `count` validation sequences (the full validation
  patches when the sources are unavailable), for the sample images."""
  if count == 0:
    return []
  from sepconv_data import builder, pipeline  # pylint: disable=import-outside-toplevel
  triplets = _validation_frames(data_dir, count, every=10**9)
  if not triplets:
    dataset = pipeline.read_split(data_dir, builder.VALIDATION).take(count)
    triplets = [(e["x0"], e["y"], e["x1"]) for e in dataset.as_numpy_iterator()]
  return triplets[:count]


@functools.lru_cache(maxsize=8)
def _sample_net(graphdef: nnx.GraphDef, conv: ConvOptions, return_kernels: bool = False):
  conv = conv._replace(forward_only=True)  # samples and full frames: no gradients
  return jax.jit(lambda params, a, b: nnx.merge(graphdef, params)(
      a, b, conv=conv, return_kernels=return_kernels), compiler_options=jit_options(conv))


class _FullFrames:
  """Interpolates full frames (x0, x1 RGB uint8) with the current parameters, on one device,
  pre-aligned by `prealign` (`TrainConfig.prealign`) as the `Interpolator` would (and followed
  by the captured frames for a network that reads them, `SepConvConfig.reads_captured_frames`)."""

  def __init__(self, graphdef: nnx.GraphDef, kernel_size: int, conv: ConvOptions,
               prealign: float = 0.0, reads_captured_frames: bool = False):
    self._kernel_size = kernel_size
    self._prealign = prealign
    self._reads_captured_frames = reads_captured_frames
    self._net = {kernels: _sample_net(graphdef, conv, kernels) for kernels in (False, True)}

  def __call__(self, params: nnx.State, x0: np.ndarray, x1: np.ndarray, *,
               kernels: bool = False):
    """The middle frame (H, W, 3) uint8; with `kernels`, (frame, the four kernel maps as
    (H, W, K) float32 NumPy arrays on the frame's grid)."""
    # One local copy of the replicated parameters (`params` may be sharded over the mesh).
    local = jax.tree.map(lambda a: a.addressable_data(0), params)
    captured = [f[None].astype(np.float32) / 255.0 for f in (x0, x1)]
    aligned = alignment.prealign(*captured, self._prealign)
    a, b = (jnp.asarray(f) for f in alignment.network_frames(*aligned, *captured,
                                                             self._reads_captured_frames))
    out = run_padded(functools.partial(self._net[kernels], local), a, b, policy=SAMPLE_PADDING,
                     kernel_size=self._kernel_size)
    middle, maps = out if kernels else (out, None)
    frame = np.asarray(metrics_lib.quantize(middle[0])).astype(np.uint8)
    return (frame, [np.asarray(m[0]) for m in maps]) if kernels else frame


class _FullValidation:
  """PSNR on full held-out frames, overall and by motion (`scoring.psnr_by_motion`), and how far
  the kernels follow that motion (`sepconv_jax.evaluation.kernels`)."""

  def __init__(self, frames: _FullFrames, triplets):
    from sepconv_data.flow import middle_flows  # OpenCV's DIS  # pylint: disable=import-outside-toplevel
    self._frames = frames
    self._triplets = [(x0, y, x1, middle_flows(x0, y, x1)) for x0, y, x1 in triplets]

  def __len__(self) -> int:
    return len(self._triplets)

  def score(self, params: nnx.State) -> dict[str, float]:
    items = []
    for x0, y, x1, flows in self._triplets:
      prediction, maps = self._frames(params, x0, x1, kernels=True)
      motion = scoring.motion_from_flows(flows[0], flows[2])
      items.append(runner.ItemResult(
          name="", psnr=scoring.psnr(prediction, y), ssim=0.0, seconds=0.0,
          psnr_motion=scoring.psnr_by_motion(prediction, y, motion),
          kernel_sums=kernel_stats.kernel_sums(maps, *flows)))
    report = runner.Report(dataset="validation", model="", items=items)
    scores = {"full_psnr": report.psnr}
    scores.update({f"full_psnr_{name}": value for name, value in report.psnr_motion.items()
                   if value is not None})
    scores.update({f"full_followed_{name}": values["followed"]
                   for name, values in report.kernels.items() if values["followed"] is not None})
    return scores


class _Samples:
  """Interpolates the sample triplets with the current parameters; writes PNGs and TensorBoard."""

  def __init__(self, frames: _FullFrames, triplets, directory: pathlib.Path):
    self._frames = frames
    self._triplets = triplets
    self._directory = directory

  def write(self, params: nnx.State, step: int, writer) -> None:
    import cv2  # pylint: disable=import-outside-toplevel
    if not self._triplets:
      return
    folder = self._directory / f"{step:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    for index, (x0, y, x1) in enumerate(self._triplets):
      middle = self._frames(params, x0, x1)
      strip = np.concatenate([x0, middle, y, x1], axis=1)  # input, prediction, truth, input
      cv2.imwrite(str(folder / f"sample_{index}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
      writer.image(f"samples/{index}", strip, step)


class _Summaries:
  """TensorBoard event files written with TensorFlow's core `tf.summary.write`.

  The `tensorboard` package (which `tf.summary.scalar`/`image` need) is not a dependency of
  tensorflow-cpu; the raw op with the scalars/images plugin metadata writes the same events, and
  `tensorboard --logdir <workdir>` reads them where TensorBoard is installed.
  """

  def __init__(self, directory: pathlib.Path | None):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    self._tf = tf
    self._writer = (tf.summary.create_file_writer(os.fspath(directory)) if directory is not None
                    else tf.summary.create_noop_writer())
    plugin = lambda name: summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name))
    self._scalar_metadata = plugin("scalars")
    self._image_metadata = plugin("images")

  def scalar(self, tag: str, value: float, step: int) -> None:
    tf = self._tf
    with self._writer.as_default():
      tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                       metadata=self._scalar_metadata)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """One uint8 (H, W, 3) image, stored as PNG (the images plugin's [width, height, png])."""
    tf = self._tf
    height, width = image.shape[:2]
    tensor = tf.stack([tf.as_string(width), tf.as_string(height), tf.io.encode_png(image)])
    with self._writer.as_default():
      tf.summary.write(tag, tensor, step=step, metadata=self._image_metadata)

  def flush(self) -> None:
    self._writer.flush()


def _flush(pending: list[tuple[int, dict]], history: list, writer, last_good: int | None,
           checkpoint_dir: pathlib.Path) -> tuple[float, float] | None:
  """Pulls pending step metrics to the host; raises on a non-finite value. (last loss, mean)."""
  if not pending:
    return None
  values = jax.device_get([m for _, m in pending])
  for (step, _), value in zip(pending, values):
    if not all(math.isfinite(float(v)) for v in value.values()):
      where = (f"steps {pending[0][0]}..{pending[-1][0]}" if len(pending) > 1 else f"step {step}")
      kept = (f"the last good checkpoint is {checkpoint_dir / str(last_good)}"
              if last_good is not None else "no checkpoint was saved")
      raise NonFiniteLossError(f"non-finite loss at step {step} (checked {where}); {kept}")
  losses_here = []
  for (step, _), value in zip(pending, values):
    loss = float(value["loss"])
    losses_here.append(loss)
    history.append((step, loss))
    for name, metric in value.items():  # loss, grad_norm and any auxiliary terms
      writer.scalar(f"train/{name}", float(metric), step)
  pending.clear()
  return losses_here[-1], float(np.mean(losses_here))


@dataclasses.dataclass(frozen=True)
class _Data:
  """The prepared cache a run reads, and the run's shape on this host."""
  data_dir: str
  has_validation: bool
  local_batch: int  # training examples per step from this host
  local_eval_batch: int
  steps_per_epoch: int
  total_steps: int


def _open_data(config: TrainConfig) -> _Data:
  """Checks the cache and the batch sizes against the devices (one-line errors)."""
  from sepconv_data import builder  # pylint: disable=import-outside-toplevel
  if config.data_dir is None:
    raise TrainingError("no training data: pass --data DIR (a cache made by sepconv prepare)")
  data_dir = os.fspath(config.data_dir)
  if not pathlib.Path(data_dir).is_dir():
    raise TrainingError(f"no prepared training data at {data_dir}: build it with "
                        f"`sepconv prepare --source DIR --out {data_dir}` or pass --data")
  cache = builder.load_builder(data_dir)  # raises CacheError without a prepared dataset
  if builder.TRAIN not in cache.info.splits:
    raise TrainingError(f"the cache in {data_dir} has no {builder.TRAIN!r} split")
  devices, hosts = jax.device_count(), jax.process_count()
  for name in ("batch_size", "validation_batch_size", "alternate_batch_size"):
    if (getattr(config, name) or 0) % devices:
      raise TrainingError(f"{name}={getattr(config, name)} must be a multiple of the "
                          f"{devices} devices")
  steps_per_epoch = config.steps_per_epoch or max(
      1, cache.info.splits[builder.TRAIN].num_examples // config.batch_size)
  return _Data(data_dir=data_dir, has_validation=builder.VALIDATION in cache.info.splits,
               local_batch=config.batch_size // hosts,
               local_eval_batch=config.validation_batch_size // hosts,
               steps_per_epoch=steps_per_epoch,
               total_steps=config.steps or config.epochs * steps_per_epoch)


def _initial_params(config: TrainConfig, init_from: str | os.PathLike) -> nnx.State:
  """The parameters of checkpoint `init_from`, which must hold the configured network, or the
  same network without unaligned sources or captured input (then extended:
  `model.with_captured_frames`)."""
  try:
    source, source_metadata = checkpoint_lib.load_model(init_from)
  except checkpoint_lib.CheckpointError as error:
    raise TrainingError(str(error)) from error
  if (config.model.reads_captured_frames and not source.config.reads_captured_frames
      and source.config == dataclasses.replace(config.model, unaligned_sources=False,
                                               captured_input=False)):
    source = with_captured_frames(source, config.model)
  if source.config != config.model:
    raise TrainingError(f"--init-from {init_from} holds a different network "
                        f"({source.config}) than the config's ({config.model})")
  order = source_metadata.get("channel_order")
  if order != CHANNEL_ORDER:
    raise TrainingError(f"--init-from {init_from} expects {order} frames; the training data "
                        f"is {CHANNEL_ORDER}")
  return nnx.state(source, nnx.Param)


def _start(config: TrainConfig, workdir: pathlib.Path, manager, mesh, *, resume: bool,
           init_from) -> tuple[nnx.GraphDef, TrainState, int | None]:
  """(graphdef, state, latest checkpoint step): fresh, from `init_from`, or resumed."""
  latest = manager.latest_step()
  if latest is not None and not resume:
    raise TrainingError(f"{workdir / CHECKPOINT_DIR} already holds checkpoints (latest step "
                        f"{latest}): "
                        "pass --resume to continue, or choose another --workdir")
  if resume and latest is not None and init_from is not None:
    # A relaunched fine-tuning job: its checkpoints already started from init_from.
    log.info("resuming from step %d; --init-from %s is not used again", latest, init_from)
  initial = _initial_params(config, init_from) if init_from is not None and latest is None else None
  graphdef, state = create_train_state(config, params=initial)
  state = replicate(state, mesh)
  if latest is not None:
    _check_resume_config(workdir, config, latest)
    state = restore_checkpoint(manager, latest, state, mesh)
  return graphdef, state, latest


class _Validator:
  """Scores the current parameters on the validation crops (and full frames), logs the line,
  writes the TensorBoard scalars and sample images; `None` without a validation split."""

  def __init__(self, config: TrainConfig, data: _Data, graphdef: nnx.GraphDef, conv, mesh,
               eval_step_fn, writer: _Summaries, workdir: pathlib.Path, is_main: bool):
    self._config, self._data, self._mesh, self._eval = config, data, mesh, eval_step_fn
    self._writer, self._is_main = writer, is_main
    self.scores: dict[int, dict[str, float]] = {}
    self._samples = self._full = None
    full_frames = _FullFrames(graphdef, config.model.kernel_size, conv, config.prealign,
                              config.model.reads_captured_frames)
    if is_main and data.has_validation and config.num_samples:
      self._samples = _Samples(full_frames, _sample_triplets(data.data_dir, config.num_samples),
                               workdir / "samples")
    if data.has_validation and config.full_validation:
      # Every host scores the same frames, so that all of them rank checkpoints alike.
      self._full = _FullValidation(full_frames, _validation_frames(
          data.data_dir, config.full_validation, gap=config.full_validation_gap))
      if not len(self._full):
        log.warning("no full validation frames (the cache's source folders are gone); "
                    "checkpoints are ranked by the validation crops")
        self._full = None

  def __call__(self, step: int, params, write_line: Callable[[str], None]
               ) -> dict[str, float] | None:
    if not self._data.has_validation:
      return None
    sums = {"psnr": 0.0, "ssim": 0.0, "count": 0.0}
    for batch in _validation_batches(self._config, self._data.data_dir,
                                     self._data.local_eval_batch):
      out = jax.device_get(self._eval(params, shard_batch(batch, self._mesh)))
      for key in sums:
        sums[key] += float(out[key])
    if not sums["count"]:
      return None
    scores = {"psnr": sums["psnr"] / sums["count"], "ssim_gaussian": sums["ssim"] / sums["count"]}
    line = (f"step {step}: validation PSNR {scores['psnr']:.2f} dB, "
            f"SSIM (Gaussian) {scores['ssim_gaussian']:.4f}")
    if self._full is not None:
      full = self._full.score(params)
      scores.update(full)
      line += (f"; full frames ({len(self._full)}) PSNR {full['full_psnr']:.2f} dB, by motion "
               + ", ".join(f"{name} {full[f'full_psnr_{name}']:.2f}"
                           for name, _, _ in scoring.MOTION_BUCKETS
                           if f"full_psnr_{name}" in full)
               + "; kernels follow " + ", ".join(
                   f"{name} {full[f'full_followed_{name}']:.2f}"
                   for name, _, _ in scoring.MOTION_BUCKETS if f"full_followed_{name}" in full))
    self.scores[step] = scores
    for name, value in scores.items():
      self._writer.scalar(f"validation/{name}", value, step)
    if self._samples is not None:
      self._samples.write(params, step, self._writer)
    if self._is_main:
      write_line(line)
    return scores


def train(config: TrainConfig, workdir: str | os.PathLike, *, resume: bool = False,
          init_from: str | os.PathLike | None = None, progress: bool = True,
          distributed: bool = False) -> TrainResult:
  """Trains (or continues training, `resume`) `config` with checkpoints etc. in `workdir`.

  `init_from` starts from another checkpoint's parameters (any loss; the network configuration
  must match) with a fresh optimizer at step 0; once the run has checkpoints, `resume` continues
  from them and `init_from` is not read again (so a fine-tuning job can be relaunched with the
  same flags). `distributed` calls `jax.distributed.initialize()` first (several hosts, each
  running the same command). Raises `TrainingError` (bad inputs, non-finite loss),
  `sepconv_data.builder.CacheError` (no prepared data) and `vgg.VGGWeightsError` (both
  ValueErrors).
  """
  if distributed:
    jax.distributed.initialize()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  # The compute precision is resolved here and recorded in config.json with the rest.
  conv = ConvOptions(config.precision).resolved()
  config = dataclasses.replace(config, precision=conv.precision)
  try:
    tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the accelerators
  except RuntimeError:
    pass  # TensorFlow already initialised (set by the caller then)
  data = _open_data(config)
  is_main = jax.process_index() == 0
  workdir = pathlib.Path(workdir).absolute()
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  loss_fn = losses.get_loss(config.loss, nu=config.nu, vgg_weights=config.vgg_weights,
                            motion_weight=config.motion_weight)
  mesh = make_mesh()

  manager = checkpoint_manager(workdir / CHECKPOINT_DIR, config.keep_checkpoints)
  try:
    graphdef, state, latest = _start(config, workdir, manager, mesh, resume=resume,
                                     init_from=init_from)
  except BaseException:
    manager.close()
    raise
  if is_main:
    (workdir / "config.json").write_text(config.to_json())

  train_step_fn, eval_step_fn = _step_functions(
      graphdef, loss_fn, make_optimizer(config), mesh, conv, _centroid_settings(config),
      config.ema_decay)
  dataset = _train_batches(config, data)
  # The data position: the pipeline is deterministic, so skipping the consumed batches puts the
  # resumed run exactly where the interrupted one stopped.
  batches = dataset.skip(int(state.step)).as_numpy_iterator()
  writer = _Summaries(workdir / "tensorboard" if is_main else None)
  validate = _Validator(config, data, graphdef, conv, mesh, eval_step_fn, writer, workdir,
                        is_main)
  try:
    state, history, times = _run_steps(config, data, state, batches, train_step_fn, mesh,
                                       manager, validate, writer, last_good=latest,
                                       checkpoint_dir=workdir / CHECKPOINT_DIR,
                                       progress=progress and is_main, is_main=is_main)
  finally:
    # The input pipeline's threads go first: tf.data's numpy_function threads (the optical flows)
    # must not outlive the interpreter.
    del batches
    manager.wait_until_finished()
    best, latest = manager.best_step(), manager.latest_step()
    manager.close()
    writer.flush()
  return TrainResult(step=int(state.step), workdir=workdir, history=history,
                     validation=validate.scores, best_step=best, latest_step=latest,
                     step_time_s=float(np.median(times.per_step)) if times.per_step else None,
                     first_step_s=times.first_step, peak_rss_mb=_peak_rss_mb())


@dataclasses.dataclass
class _StepTimes:
  first_step: float | None = None  # seconds, compilation included
  per_step: list[float] = dataclasses.field(default_factory=list)  # mean of each log window


def _run_steps(config: TrainConfig, data: _Data, state: TrainState, batches, train_step_fn, mesh,
               manager, validate: _Validator, writer: _Summaries, *, last_good: int | None,
               checkpoint_dir: pathlib.Path, progress: bool, is_main: bool
               ) -> tuple[TrainState, list[tuple[int, float]], _StepTimes]:
  """The steps from `state.step` to the end: log every `log_every`, checkpoint (and validate at
  each epoch end) as the module docstring says. Returns the state, loss history and times."""
  import tqdm  # pylint: disable=import-outside-toplevel
  history: list[tuple[int, float]] = []
  pending: list[tuple[int, dict]] = []
  times = _StepTimes()
  start_step, total_steps = int(state.step), data.total_steps
  bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not progress,
                  desc="train", unit="step", dynamic_ncols=True)
  try:
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start_step + 1, total_steps + 1):
      state, step_metrics = train_step_fn(state, shard_batch(next(batches), mesh))
      pending.append((step, step_metrics))
      window_steps += 1
      if times.first_step is None:
        jax.block_until_ready(step_metrics)
        times.first_step = time.perf_counter() - window_start
        window_start, window_steps = time.perf_counter(), 0
      epoch_end = step % data.steps_per_epoch == 0
      save = epoch_end or step % config.checkpoint_every == 0 or step == total_steps
      if save or step % config.log_every == 0:
        flushed = _flush(pending, history, writer, last_good, checkpoint_dir)
        if window_steps:
          times.per_step.append((time.perf_counter() - window_start) / window_steps)
        if flushed is not None:
          step_time = times.per_step[-1] if window_steps else times.first_step
          bar.set_postfix(loss=f"{flushed[0]:.4f}", s_per_step=f"{step_time:.2f}", refresh=False)
          if bar.disable and is_main:  # no bar (logs, nohup): one plain line per log interval
            print(f"step {step}/{total_steps}: loss {flushed[1]:.4f} (mean since last line), "
                  f"{step_time:.2f} s/step", flush=True)
          writer.scalar("train/step_time_s", step_time, step)
          writer.scalar("train/peak_rss_mb", _peak_rss_mb(), step)
        bar.update(step - bar.n)
      if save:
        scores = (validate(step, state.model_params, bar.write)
                  if (epoch_end or step == total_steps) else None)
        save_checkpoint(manager, state, config, validation=scores)
        last_good = step
      if save or step % config.log_every == 0:  # validation and saving are not step time
        window_start, window_steps = time.perf_counter(), 0
  finally:
    bar.close()
  return state, history, times
