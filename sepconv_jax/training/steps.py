"""The pure parts of training: state, learning-rate schedule, optimizer, the jitted steps and
their data-parallel wrappers. No I/O (`sepconv_jax.training.loop` has it).

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
(`sepconv train --distributed`); each host reads its own share of the data
(`process_index`/`process_count`) and contributes `batch_size / process_count` examples per step
through `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pallas_kernels.conv import xla_compiler_options
from sepconv_jax.training import metrics as metrics_lib
from sepconv_jax.network.model import (CAPTURED_INPUT_CHANNELS, FIRST_CAPTURED_SUBNET,
                                       ConvOptions, SepConvNet)
from sepconv_jax.training import losses
from sepconv_jax.training.configs import TrainConfig

DATA_AXIS = "data"
class TrainingError(Exception):
  """A problem with the run's inputs or work directory (reported as one line by `sepconv train`)."""


class NonFiniteLossError(TrainingError):
  """The loss or gradient norm became NaN or infinite; nothing after the last good step is saved."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken == training batches consumed
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32[2] PRNG key
  # With `TrainConfig.ema_decay`: the moving average of `params` (Polyak averaging); else None.
  ema_params: nnx.State | None = None

  @property
  def model_params(self) -> nnx.State:
    """The parameters to validate and save as the model: the average where there is one."""
    return self.params if self.ema_params is None else self.ema_params


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
  """AdaMax as `config` sets it; one object per distinct setting (so jitted steps built with it
  can be cached and reused by later runs of the same configuration in a process)."""
  optimizer = _cached_adamax(**{name: getattr(config, name) for name in _OPTIMIZER_FIELDS})
  if config.unaligned_lr_scale == 1.0:  # the plain optimizer state, as runs before the option
    return optimizer
  return _cached_scaled(optimizer, config.model, config.unaligned_lr_scale)


_OPTIMIZER_FIELDS = ("learning_rate", "b1", "b2", "eps", "warmup_steps", "decay_start",
                     "decay_end", "final_learning_rate")
_cached_adamax = functools.lru_cache(maxsize=16)(adamax)


def unaligned_update_scales(model_config, scale: float) -> nnx.State:
  """Per-parameter multipliers of the updates: `scale` for what only the captured frames of a
  network with unaligned sources or captured input use (their channels of the encoder's first
  convolution, with unaligned sources their kernel subnets), 1 elsewhere; arrays where a
  parameter is split, scalars otherwise."""
  abstract = nnx.split(nnx.eval_shape(lambda: SepConvNet(model_config, rngs=nnx.Rngs(0))),
                       nnx.Param)[1]

  def multiplier(path, leaf):
    names = tuple(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
                  for key in path)
    if names[:4] == ("encoder", 0, "convs", 0) and names[4] == "kernel":
      channels = np.ones(leaf.shape[2], np.float32)
      for captured in CAPTURED_INPUT_CHANNELS:
        channels[captured] = scale
      return jnp.asarray(channels[None, None, :, None])
    if (names[0] in ("vertical_subnets", "horizontal_subnets")
        and names[1] >= FIRST_CAPTURED_SUBNET):
      return jnp.float32(scale)
    return jnp.float32(1.0)

  return jax.tree_util.tree_map_with_path(multiplier, abstract)


@functools.lru_cache(maxsize=16)
def _cached_scaled(optimizer, model_config, scale: float) -> optax.GradientTransformation:
  """`optimizer`, then its updates multiplied by `unaligned_update_scales`."""
  scales = unaligned_update_scales(model_config, scale)
  multiply = optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda updates, state, params=None: (jax.tree.map(jnp.multiply, updates, scales), state))
  return optax.chain(optimizer, multiply)


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
  # The average starts at the initial parameters, in buffers of its own (the state is donated).
  ema = None if config.ema_decay is None else jax.tree.map(jnp.copy, params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=make_optimizer(config).init(params),
                     rng=jax.random.PRNGKey(config.seed), ema_params=ema)
  return graphdef, state


def predict(graphdef: nnx.GraphDef, params: nnx.State, batch: Mapping[str, jax.Array],
            conv: ConvOptions = ConvOptions()) -> jax.Array:
  return nnx.merge(graphdef, params)(batch["x0"], batch["x1"], conv=conv)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: nnx.GraphDef,
               loss_fn: losses.Loss, optimizer: optax.GradientTransformation,
               axis_name: str | None = None, conv: ConvOptions = ConvOptions(),
               centroid: tuple[float, int | None] | None = None,
               ema_decay: float | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdaMax step on `batch`; pure. With `axis_name`, averages over that mapped axis; `conv`
  says how the network's convolutions run (precision, implementation); `centroid` (weight,
  anneal steps) adds the flow-guided kernel loss (`losses.kernel_centroid_loss`), for which the
  batch carries the flows; `ema_decay` moves `state.ema_params` towards the new parameters."""
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
  ema = (None if ema_decay is None
         else optax.incremental_update(params, state.ema_params, 1.0 - ema_decay))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                            ema_params=ema)
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


def jit_options(conv: ConvOptions) -> dict[str, str]:
  """Per-computation XLA options for the network's convolution path (`xla_compiler_options`)."""
  return xla_compiler_options(impl=conv.impl, precision=conv.precision)


def make_train_step(graphdef: nnx.GraphDef, loss_fn: losses.Loss,
                    optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    conv: ConvOptions = ConvOptions(),
                    centroid: tuple[float, int | None] | None = None,
                    ema_decay: float | None = None
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """`train_step` jitted over `mesh`: batch split on its first axis, state replicated, donated."""
  conv = conv.resolved()
  step = functools.partial(train_step, graphdef=graphdef, loss_fn=loss_fn, optimizer=optimizer,
                           axis_name=DATA_AXIS, conv=conv, centroid=centroid, ema_decay=ema_decay)
  # check_vma=False: the pmean above is the one explicit reduction (with VMA checking on, grad
  # of replicated parameters would already be summed over devices).
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=0, compiler_options=jit_options(conv))


def make_eval_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh,
                   conv: ConvOptions = ConvOptions()):
  conv = conv._replace(forward_only=True).resolved()  # evaluation takes no gradients
  step = functools.partial(eval_step, graphdef=graphdef, axis_name=DATA_AXIS, conv=conv)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(),
                               check_vma=False), compiler_options=jit_options(conv))


def replicate(tree, mesh: jax.sharding.Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This host's examples -> global arrays split over the mesh's data axis."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
