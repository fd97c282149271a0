"""Training SepConv: a pure, jitted `train_step`, Orbax checkpoints, validation and the loop.

Pure parts (no I/O): `TrainState`, `create_train_state`, `train_step`, `eval_step` and their
data-parallel wrappers `make_train_step` / `make_eval_step`. The one function with I/O is `train`
(data, checkpoints, TensorBoard, images, progress bar).

State. `TrainState` is a plain pytree: `params` (the network's `nnx.State`, from splitting the
model once; `nnx.merge(graphdef, params)` rebuilds it inside the loss), the optax AdaMax state,
the step and a raw PRNG key (split every step; the model and losses are deterministic today, the
key is there so that stochastic additions stay resumable). The graphdef is static: it lives in the
closures of the step functions, never in the state.

Data parallelism. Steps run under `jax.shard_map` over a 1-D mesh of every device of every host
(axis "data"): the batch is split across devices, parameters and optimizer state are replicated,
and each device's gradients and loss are averaged with `lax.pmean` before the (identical) update.
shard_map rather than automatic SPMD partitioning because the op's CPU kernel is an FFI custom
call without a partitioning rule: under `jit` sharding XLA would all-gather the batch and run the
op whole on every device. Every loss is a mean over equally sized per-device shards, so the mean
of the per-device losses is the global loss. Several hosts: `jax.distributed.initialize()` first
(`train.py --distributed`); each host reads its own share of the data
(`process_index`/`process_count`) and contributes `batch_size / process_count` examples per step
through `jax.make_array_from_process_local_data`.

Checkpoints. `<workdir>/checkpoints/<step>/` is written by one `ocp.CheckpointManager`, with items
  model      the parameters: the same item as `sepconv_jax.save_model`, so
             `sepconv_jax.load_model(<workdir>/checkpoints/<step>)` (and the Interpolator) loads
             any step directory;
  metadata   JSON: config, channel order ("RGB"), and in `info` the step, loss, the whole
             `TrainConfig` and the validation scores;
  optimizer  the AdaMax state;
  train      step, PRNG key and the number of training batches consumed (the data position).
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
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas_kernels.conv import xla_compiler_options
from sepconv_jax import checkpoint as checkpoint_lib
from sepconv_jax import evaluation, losses, metrics as metrics_lib
from sepconv_jax.configs import TrainConfig
from sepconv_jax.model import ConvOptions, SepConvNet
from sepconv_jax.padding import run_padded

DATA_AXIS = "data"
CHECKPOINT_DIR = "checkpoints"
OPTIMIZER_ITEM = "optimizer"
TRAIN_ITEM = "train"
ITEM_NAMES = (checkpoint_lib.MODEL_ITEM, checkpoint_lib.METADATA_ITEM, OPTIMIZER_ITEM, TRAIN_ITEM)
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


class TrainingError(Exception):
  """A problem with the run's inputs or work directory (reported as one line by train.py)."""


class NonFiniteLossError(TrainingError):
  """The loss or gradient norm became NaN or infinite; nothing after the last good step is saved."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken == training batches consumed
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32[2] PRNG key


def learning_rate_schedule(learning_rate: float, warmup_steps: int = 0,
                           decay_start: int | None = None, decay_end: int | None = None,
                           final_learning_rate: float = 0.0) -> float | optax.Schedule:
  """The learning rate per optimizer step: a linear ramp from 0 over `warmup_steps`, then
  `learning_rate`, then (with `decay_start`) a cosine from `learning_rate` at `decay_start` down
  to `final_learning_rate` at `decay_end`, and that from there on.

  A plain float when the rate is constant (no warm-up, no decay): the optimizer state then has no
  step count, as in earlier checkpoints.
  """
  if not warmup_steps and decay_start is None:
    return learning_rate
  ramp = (optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps
          else optax.constant_schedule(learning_rate))
  if decay_start is None:
    return ramp
  cosine = optax.cosine_decay_schedule(learning_rate, decay_end - decay_start,
                                       alpha=final_learning_rate / learning_rate)
  return optax.join_schedules([ramp, cosine], [decay_start])


def adamax(learning_rate: float, b1: float, b2: float, eps: float, warmup_steps: int = 0,
           decay_start: int | None = None, decay_end: int | None = None,
           final_learning_rate: float = 0.0) -> optax.GradientTransformation:
  """AdaMax following `learning_rate_schedule` (constant as in the paper, by default).

  Why the warm-up ramp: AdaMax divides by a running max of |gradient|, so its first update moves
  every weight by the full learning rate, in the sign of its gradient; at 1e-3 that one step
  throws a network started at frame averaging far from any image. The ramp lets the running max
  settle first. Why the decay: at a constant rate the validation score of short CPU runs swings
  by a few tenths of a dB between checkpoints; annealing at the end settles the weights.
  """
  schedule = learning_rate_schedule(learning_rate, warmup_steps, decay_start, decay_end,
                                    final_learning_rate)
  return optax.adamax(schedule, b1=b1, b2=b2, eps=eps)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  return adamax(*_adamax_settings(config))


def _adamax_settings(config: TrainConfig) -> tuple:
  return (config.learning_rate, config.b1, config.b2, config.eps, config.warmup_steps,
          config.decay_start, config.decay_end, config.final_learning_rate)


# The initialisation is a one-off program of random draws: XLA's optimisation passes cost far more
# than they save there (about 19 s vs 3 s to compile the tiny network on 2 busy cores).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.lru_cache(maxsize=8)
def _initializer(model_config) -> Callable[[int], nnx.State]:
  def init(seed):
    # One filter: fails loudly if the network ever grows non-parameter state (e.g. batch stats).
    return nnx.split(SepConvNet(model_config, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)[1]
  # In one compiled program (eagerly, every initializer call compiles on its own), cached per
  # network so that several runs in one process compile it once.
  return jax.jit(init, compiler_options=_FAST_COMPILE)


def create_train_state(config: TrainConfig, *, params: nnx.State | None = None
                       ) -> tuple[nnx.GraphDef, TrainState]:
  """(graphdef, initial state) of `config`; `params` replaces the fresh initialisation."""
  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: SepConvNet(config.model, rngs=nnx.Rngs(0))), nnx.Param)
  if params is None:
    params = _initializer(config.model)(config.seed)
  elif jax.tree.structure(params) != jax.tree.structure(abstract):
    raise TrainingError("the initial parameters do not fit the configured network")
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=make_optimizer(config).init(params),
                     rng=jax.random.PRNGKey(config.seed))
  return graphdef, state


def predict(graphdef: nnx.GraphDef, params: nnx.State, batch: Mapping[str, jax.Array],
            conv: ConvOptions = ConvOptions()) -> jax.Array:
  return nnx.merge(graphdef, params)(batch["x0"], batch["x1"], conv=conv)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef,
               loss_fn: losses.Loss, optimizer: optax.GradientTransformation,
               axis_name: str | None = None, conv: ConvOptions = ConvOptions(),
               centroid: tuple[float, int | None] | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdaMax step on `batch`; pure. With `axis_name`, averages over that mapped axis; `conv`
  says how the network's convolutions run (precision, implementation); `centroid` (weight,
  anneal steps) adds the flow-guided kernel loss (`losses.kernel_centroid_loss`), for which the
  batch carries the flows."""
  rng, _ = jax.random.split(state.rng)

  def compute_loss(params):
    if centroid is None:
      return loss_fn(batch, predict(graphdef, params, batch, conv)), {}
    prediction, kernels = nnx.merge(graphdef, params)(batch["x0"], batch["x1"], conv=conv,
                                                      return_kernels=True)
    centroid_loss = losses.kernel_centroid_loss(batch, kernels)
    weight = losses.centroid_weight(state.step, *centroid)
    return loss_fn(batch, prediction) + weight * centroid_loss, {"centroid_loss": centroid_loss}

  # Gradients flow through the op's custom VJP (C++ kernel on CPU, Pallas on GPU).
  (loss, extra), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  if axis_name is not None:
    loss, extra, grads = jax.lax.pmean((loss, extra, grads), axis_name)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **extra}


def eval_step(params: nnx.State, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef,
              axis_name: str | None = None, conv: ConvOptions = ConvOptions()
              ) -> dict[str, jax.Array]:
  """Sums of per-image PSNR and Gaussian SSIM over the examples where batch["mask"] is 1."""
  prediction = predict(graphdef, params, batch, conv)
  mask = batch["mask"]
  sums = {"psnr": jnp.sum(metrics_lib.psnr(prediction, batch["y"]) * mask),
          "ssim": jnp.sum(metrics_lib.ssim_gaussian(prediction, batch["y"]) * mask),
          "count": jnp.sum(mask)}
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every host)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, (DATA_AXIS,))


def _jit_options(conv: ConvOptions) -> dict[str, str]:
  """Per-computation XLA options for the network's convolution path (`xla_compiler_options`)."""
  return xla_compiler_options(impl=conv.impl, precision=conv.precision)


def make_train_step(graphdef: nnx.GraphDef, loss_fn: losses.Loss,
                    optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    conv: ConvOptions = ConvOptions(),
                    centroid: tuple[float, int | None] | None = None
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """`train_step` jitted over `mesh`: batch split on its first axis, state replicated, donated."""
  conv = conv.resolved()
  step = functools.partial(train_step, graphdef=graphdef, loss_fn=loss_fn, optimizer=optimizer,
                           axis_name=DATA_AXIS, conv=conv, centroid=centroid)
  # check_vma=False: the pmean above is the one explicit reduction (with VMA checking on, grad
  # of replicated parameters would already be summed over devices).
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=0, compiler_options=_jit_options(conv))


def make_eval_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh,
                   conv: ConvOptions = ConvOptions()):
  conv = conv.resolved()
  step = functools.partial(eval_step, graphdef=graphdef, axis_name=DATA_AXIS, conv=conv)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(),
                               check_vma=False), compiler_options=_jit_options(conv))


@functools.lru_cache(maxsize=16)
def _step_functions(graphdef: nnx.GraphDef, loss_fn: losses.Loss, adamax_settings: tuple, mesh,
                    conv: ConvOptions, centroid: tuple[float, int | None] | None):
  """(train step, eval step), cached so that runs of one configuration in a process (tests,
  sweeps) compile them once."""
  optimizer = adamax(*adamax_settings)
  return (make_train_step(graphdef, loss_fn, optimizer, mesh, conv, centroid),
          make_eval_step(graphdef, mesh, conv))


def _centroid_settings(config: TrainConfig) -> tuple[float, int | None] | None:
  return (config.centroid_weight, config.centroid_steps) if config.centroid_weight else None


def replicate(tree, mesh: jax.sharding.Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This host's examples -> global arrays split over the mesh's data axis."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------
# Checkpoints


# Orbax warns at every save without validation scores (mid-epoch saves) that a best-checkpoint
# metric was asked for: those saves are kept by the LatestN policy on purpose.
logging.getLogger("absl").addFilter(
    lambda record: "did not provide metrics" not in record.getMessage())


def checkpoint_manager(directory: str | os.PathLike, keep: int = 3, *, read_only: bool = False
                       ) -> ocp.CheckpointManager:
  """The manager of `<workdir>/checkpoints`: latest `keep` plus the best by validation PSNR."""
  best_fn = lambda metrics: next(metrics[k] for k in BEST_METRICS if k in metrics)
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      # Ascending sort, the last n kept: the highest PSNR. Checkpoints without validation scores
      # (mid-epoch saves) are left to LatestN.
      ocp.checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=False, n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn, best_mode="max", preservation_policy=policy, create=not read_only,
      read_only=read_only, enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=ITEM_NAMES,
                               options=options)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, config: TrainConfig, *,
                    validation: dict[str, float] | None = None) -> int:
  step = int(state.step)
  metadata = checkpoint_lib.make_metadata(config.model, channel_order=CHANNEL_ORDER, info={
      "step": step, "loss": config.loss, "train_config": config.to_dict(),
      "validation": validation})
  manager.save(step, args=ocp.args.Composite(**{
      checkpoint_lib.MODEL_ITEM: ocp.args.StandardSave(state.params),
      checkpoint_lib.METADATA_ITEM: ocp.args.JsonSave(metadata),
      OPTIMIZER_ITEM: ocp.args.StandardSave(state.opt_state),
      TRAIN_ITEM: ocp.args.StandardSave({"step": state.step, "rng": state.rng,
                                         "batches_consumed": state.step}),
  }), metrics=validation, force=True)
  return step


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, template: TrainState,
                       mesh: jax.sharding.Mesh) -> TrainState:
  """The state saved at `step`, laid out like `template` and replicated over `mesh`."""
  sharding = NamedSharding(mesh, P())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          template)
  restored = manager.restore(step, args=ocp.args.Composite(**{
      checkpoint_lib.MODEL_ITEM: ocp.args.StandardRestore(abstract.params),
      OPTIMIZER_ITEM: ocp.args.StandardRestore(abstract.opt_state),
      TRAIN_ITEM: ocp.args.StandardRestore({"step": abstract.step, "rng": abstract.rng,
                                            "batches_consumed": abstract.step}),
  }))
  train = restored[TRAIN_ITEM]
  if int(train["batches_consumed"]) != int(train["step"]):
    raise TrainingError(f"checkpoint {step} has an unexpected data position")
  return TrainState(step=train["step"], params=restored[checkpoint_lib.MODEL_ITEM],
                    opt_state=restored[OPTIMIZER_ITEM], rng=train["rng"])


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


def _validation_batches(config: TrainConfig, data_dir: str, local_batch: int
                        ) -> Iterator[dict[str, np.ndarray]]:
  from sepconv_data import pipeline  # pylint: disable=import-outside-toplevel
  many_hosts = jax.process_count() > 1
  dataset = pipeline.validation_dataset(
      data_dir, batch_size=local_batch, crop_size=config.crop_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      threads=config.data_threads,
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
                       every: int = evaluation.DAVIS_EVERY
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
        triplets = [(t.first, t.truth, t.second) for t in evaluation.frame_triplets(
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
def _sample_net(graphdef: nnx.GraphDef, conv: ConvOptions):
  return jax.jit(lambda params, a, b: nnx.merge(graphdef, params)(a, b, conv=conv),
                 compiler_options=_jit_options(conv))


class _FullFrames:
  """Interpolates full frames (x0, x1 RGB uint8) with the current parameters, on one device."""

  def __init__(self, graphdef: nnx.GraphDef, kernel_size: int, conv: ConvOptions):
    self._kernel_size = kernel_size
    self._net = _sample_net(graphdef, conv)

  def __call__(self, params: nnx.State, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    # One local copy of the replicated parameters (`params` may be sharded over the mesh).
    local = jax.tree.map(lambda a: a.addressable_data(0), params)
    a, b = (jnp.asarray(f[None], jnp.float32) / 255.0 for f in (x0, x1))
    middle = run_padded(functools.partial(self._net, local), a, b, policy=SAMPLE_PADDING,
                        kernel_size=self._kernel_size)
    return np.asarray(metrics_lib.quantize(middle[0])).astype(np.uint8)


class _FullValidation:
  """PSNR on full held-out frames, overall and by motion (`evaluation.psnr_by_motion`)."""

  def __init__(self, frames: _FullFrames, triplets):
    self._frames = frames
    self._triplets = [(x0, y, x1, evaluation.motion_magnitude(x0, x1, y))
                      for x0, y, x1 in triplets]

  def __len__(self) -> int:
    return len(self._triplets)

  def score(self, params: nnx.State) -> dict[str, float]:
    items = []
    for x0, y, x1, motion in self._triplets:
      prediction = self._frames(params, x0, x1)
      items.append(evaluation.ItemResult(
          name="", psnr=evaluation.psnr(prediction, y), ssim=0.0, seconds=0.0,
          psnr_motion=evaluation.psnr_by_motion(prediction, y, motion)))
    report = evaluation.Report(dataset="validation", model="", items=items)
    scores = {"full_psnr": report.psnr}
    scores.update({f"full_psnr_{name}": value for name, value in report.psnr_motion.items()
                   if value is not None})
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


def train(config: TrainConfig, workdir: str | os.PathLike, *, resume: bool = False,
          init_from: str | os.PathLike | None = None, progress: bool = True) -> TrainResult:
  """Trains (or continues training, `resume`) `config` with checkpoints etc. in `workdir`.

  `init_from` starts from another checkpoint's parameters (any loss; the network configuration
  must match) with a fresh optimizer at step 0; once the run has checkpoints, `resume` continues
  from them and `init_from` is not read again (so a fine-tuning job can be relaunched with the
  same flags). Raises `TrainingError` (bad inputs, non-finite loss) and
  `sepconv_data.builder.CacheError` (no prepared data).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tqdm  # pylint: disable=import-outside-toplevel
  from sepconv_data import builder, pipeline  # pylint: disable=import-outside-toplevel

  # The compute precision is resolved here and recorded in config.json with the rest.
  conv = ConvOptions(config.precision).resolved()
  config = dataclasses.replace(config, precision=conv.precision)

  try:
    tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the accelerators
  except RuntimeError:
    pass  # TensorFlow already initialised (set by the caller then)
  if config.data_dir is None:
    raise TrainingError("no training data: pass --data DIR (a cache made by "
                        "sepconv prepare)")
  data_dir = os.fspath(config.data_dir)
  if not pathlib.Path(data_dir).is_dir():
    raise TrainingError(f"no prepared training data at {data_dir}: build it with "
                        f"`sepconv prepare --source DIR --out {data_dir}` or pass "
                        "--data")
  cache = builder.load_builder(data_dir)  # raises CacheError without a prepared dataset
  if builder.TRAIN not in cache.info.splits:
    raise TrainingError(f"the cache in {data_dir} has no {builder.TRAIN!r} split")
  has_validation = builder.VALIDATION in cache.info.splits

  devices, hosts = jax.device_count(), jax.process_count()
  for name in ("batch_size", "validation_batch_size"):
    if getattr(config, name) % devices:
      raise TrainingError(f"{name}={getattr(config, name)} must be a multiple of the "
                          f"{devices} devices")
  local_batch = config.batch_size // hosts
  local_eval_batch = config.validation_batch_size // hosts
  steps_per_epoch = config.steps_per_epoch or max(
      1, cache.info.splits[builder.TRAIN].num_examples // config.batch_size)
  total_steps = config.steps or config.epochs * steps_per_epoch
  is_main = jax.process_index() == 0

  workdir = pathlib.Path(workdir).absolute()
  checkpoint_dir = workdir / CHECKPOINT_DIR
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  loss_fn = losses.get_loss(config.loss, nu=config.nu, vgg_weights=config.vgg_weights)
  mesh = make_mesh()

  manager = checkpoint_manager(checkpoint_dir, config.keep_checkpoints)
  latest = manager.latest_step()
  try:
    if latest is not None and not resume:
      raise TrainingError(f"{checkpoint_dir} already holds checkpoints (latest step {latest}): "
                          "pass --resume to continue, or choose another --workdir")
    if resume and latest is not None and init_from is not None:
      # A relaunched fine-tuning job: its checkpoints already started from init_from.
      log.info("resuming from step %d; --init-from %s is not used again", latest, init_from)

    initial_params = None
    if init_from is not None and latest is None:
      try:
        source, source_metadata = checkpoint_lib.load_model(init_from)
      except checkpoint_lib.CheckpointError as error:
        raise TrainingError(str(error)) from error
      if source.config != config.model:
        raise TrainingError(f"--init-from {init_from} holds a different network "
                            f"({source.config}) than the config's ({config.model})")
      order = source_metadata.get("channel_order")
      if order != CHANNEL_ORDER:
        raise TrainingError(f"--init-from {init_from} expects {order} frames; the training data "
                            f"is {CHANNEL_ORDER}")
      initial_params = nnx.state(source, nnx.Param)

    graphdef, state = create_train_state(config, params=initial_params)
    state = replicate(state, mesh)
    if latest is not None:
      _check_resume_config(workdir, config, latest)
      state = restore_checkpoint(manager, latest, state, mesh)
    start_step = int(state.step)
  except BaseException:
    manager.close()
    raise
  if is_main:
    (workdir / "config.json").write_text(config.to_json())

  train_step_fn, eval_step_fn = _step_functions(
      graphdef, loss_fn, _adamax_settings(config), mesh, conv, _centroid_settings(config))
  dataset = pipeline.train_dataset(
      data_dir, batch_size=local_batch, crop_size=config.crop_size, seed=config.seed,
      process_index=jax.process_index(), process_count=hosts,
      shuffle_buffer=config.shuffle_buffer, threads=config.data_threads,
      min_scale=config.min_scale, flows=bool(config.centroid_weight))
  # The data position: the pipeline is deterministic, so skipping the consumed batches puts the
  # resumed run exactly where the interrupted one stopped.
  batches = dataset.skip(start_step).as_numpy_iterator()

  writer = _Summaries(workdir / "tensorboard" if is_main else None)
  samples = full_validation = None
  full_frames = _FullFrames(graphdef, config.model.kernel_size, conv)
  if is_main and has_validation and config.num_samples:
    samples = _Samples(full_frames, _sample_triplets(data_dir, config.num_samples),
                       workdir / "samples")
  if has_validation and config.full_validation:
    # Every host scores the same frames, so that all of them rank checkpoints alike.
    full_validation = _FullValidation(full_frames, _validation_frames(
        data_dir, config.full_validation, gap=config.full_validation_gap))
    if not len(full_validation):
      log.warning("no full validation frames (the cache's source folders are gone); checkpoints "
                  "are ranked by the validation crops")
      full_validation = None

  history: list[tuple[int, float]] = []
  validation_scores: dict[int, dict[str, float]] = {}
  pending: list[tuple[int, dict]] = []
  window_times: list[float] = []
  first_step_s = None
  last_good = latest
  bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not (progress and is_main),
                  desc="train", unit="step", dynamic_ncols=True)

  def validate(step: int) -> dict[str, float] | None:
    if not has_validation:
      return None
    sums = {"psnr": 0.0, "ssim": 0.0, "count": 0.0}
    for batch in _validation_batches(config, data_dir, local_eval_batch):
      out = jax.device_get(eval_step_fn(state.params, shard_batch(batch, mesh)))
      for key in sums:
        sums[key] += float(out[key])
    if not sums["count"]:
      return None
    scores = {"psnr": sums["psnr"] / sums["count"], "ssim_gaussian": sums["ssim"] / sums["count"]}
    line = (f"step {step}: validation PSNR {scores['psnr']:.2f} dB, "
            f"SSIM (Gaussian) {scores['ssim_gaussian']:.4f}")
    if full_validation is not None:
      full = full_validation.score(state.params)
      scores.update(full)
      line += (f"; full frames ({len(full_validation)}) PSNR {full['full_psnr']:.2f} dB, by motion "
               + ", ".join(f"{name} {full[f'full_psnr_{name}']:.2f}"
                           for name, _, _ in evaluation.MOTION_BUCKETS
                           if f"full_psnr_{name}" in full))
    validation_scores[step] = scores
    for name, value in scores.items():
      writer.scalar(f"validation/{name}", value, step)
    if samples is not None:
      samples.write(state.params, step, writer)
    if is_main:
      bar.write(line)
    return scores

  try:
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start_step + 1, total_steps + 1):
      batch = shard_batch(next(batches), mesh)
      state, step_metrics = train_step_fn(state, batch)
      pending.append((step, step_metrics))
      window_steps += 1
      if first_step_s is None:
        jax.block_until_ready(step_metrics)
        first_step_s = time.perf_counter() - window_start
        window_start, window_steps = time.perf_counter(), 0
      epoch_end = step % steps_per_epoch == 0
      save = epoch_end or step % config.checkpoint_every == 0 or step == total_steps
      if save or step % config.log_every == 0:
        flushed = _flush(pending, history, writer, last_good, checkpoint_dir)
        if window_steps:
          window_times.append((time.perf_counter() - window_start) / window_steps)
        if flushed is not None:
          step_time = window_times[-1] if window_steps else first_step_s
          bar.set_postfix(loss=f"{flushed[0]:.4f}", s_per_step=f"{step_time:.2f}", refresh=False)
          if bar.disable and is_main:  # no bar (logs, nohup): one plain line per log interval
            print(f"step {step}/{total_steps}: loss {flushed[1]:.4f} (mean since last line), "
                  f"{step_time:.2f} s/step", flush=True)
          writer.scalar("train/step_time_s", step_time, step)
          writer.scalar("train/peak_rss_mb", _peak_rss_mb(), step)
        bar.update(step - bar.n)
      if save:
        scores = validate(step) if (epoch_end or step == total_steps) else None
        save_checkpoint(manager, state, config, validation=scores)
        last_good = step
      if save or step % config.log_every == 0:
        window_start, window_steps = time.perf_counter(), 0
  finally:
    # The input pipeline's threads go first: tf.data's numpy_function threads (the optical flows)
    # must not outlive the interpreter.
    del batches
    bar.close()
    manager.wait_until_finished()
    best, latest = manager.best_step(), manager.latest_step()
    manager.close()
    writer.flush()
  return TrainResult(step=int(state.step), workdir=workdir, history=history,
                     validation=validation_scores, best_step=best, latest_step=latest,
                     step_time_s=float(np.median(window_times)) if window_times else None,
                     first_step_s=first_step_s, peak_rss_mb=_peak_rss_mb())
