"""Training configurations as code: `get_config(name)` returns a frozen `TrainConfig`.

  default         the paper's recipe: batch 16 of 128x128 crops, AdaMax at lr 1e-3 (the value the
                  original authors' and the replication's code use; the paper's text says 0.01),
                  L1 loss, plain Flax initialisation of the published architecture.
  frame_average   `default` with the network started at frame averaging and lr 2e-4, which on this
                  project's CPU runs trained far better in the first hundreds of steps than the
                  plain start.
  cpu             the recipe for a CPU budget: `frame_average` with kernel normalisation (each
                  output pixel a weighted mean, as in SepConv++) and the paper's lr 1e-3, reached
                  by a 200-step warm-up; batch 16 of 64x64 crops taken after a random downscale
                  in [0.5, 1] (more, shorter steps for the same pixels; smaller motion, closer to
                  UCF101's); validation every 200 steps, a checkpoint every 100. The first recipe
                  of this project's CPU runs to beat frame averaging on the held-out DAVIS
                  sequences (see the README).
  tiny            a few-thousand-parameter network (K = 5), batch 4 of 32x32 crops, short epochs:
                  for tests and laptops.

Launch (a full run; the README has the whole recipe):

  sepconv prepare --source ../shared/data/davis_480p --source ../shared/data/videos
  sepconv train --config default --loss l1                 # -> runs/default-l1
  sepconv train --config cpu --loss l1 --steps 3000        # -> runs/cpu-l1
  sepconv train --config default --loss l1 --resume
  sepconv train --config default --loss l1+vgg --nu 1e-5 --vgg-weights vgg19.pth \
      --init-from runs/default-l1/checkpoints/<best step>

Flags of `sepconv train` override single fields (`with_overrides`), so a config here is the whole
record of a run: it is written to `<workdir>/config.json` and compared on `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pallas_kernels.conv import PRECISIONS
from sepconv_jax.training.losses import LOSSES
from sepconv_jax.network.model import SepConvConfig


CENTROID_FLOWS = ("dis", "objects")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a training run.

  Attributes:
    model: The network (`SepConvConfig`).
    loss: One of `sepconv_jax.training.losses.LOSSES`; `nu` weights the VGG term of "l1+vgg" and
      `vgg_weights` is the local VGG-19 weights file the "vgg" losses need.
    learning_rate, b1, b2, eps: AdaMax (`optax.adamax`), constant learning rate as in the paper
      unless a warm-up or decay is set (`sepconv_jax.training.learning_rate_schedule`).
    warmup_steps: The learning rate ramps up linearly from 0 over this many steps first (0: no
      ramp; see `sepconv_jax.training.adamax` for why a ramp matters).
    decay_start, decay_end, final_learning_rate: If set (both steps or neither), the learning
      rate follows a cosine from `learning_rate` at step `decay_start` down to
      `final_learning_rate` at `decay_end`, and stays there.
    batch_size: Global batch (all devices and hosts together); a multiple of the device count.
    crop_size: Side of the square random training crops (and of the centre validation crops).
    min_scale: Training patches are first downscaled by a random factor in [min_scale, 1]
      (1: never), which shrinks their motion too (`sepconv_data.pipeline.random_downscale`).
    alternate_crop_size, alternate_min_scale: Mixed crops: every second step (the odd ones)
      trains on `alternate_crop_size` crops downscaled by a random factor in
      [alternate_min_scale, 1] instead, `alternate_batch_size` of them, so that both kinds of
      step see as many pixels (say 64x64 downscaled crops, small motion, next to 128x128 ones
      that hold large motion). None: off. Validation stays on `crop_size` crops.
    max_flow: Train only on the cached patches whose mean motion from x0 to x1 (their DIS flow,
      full-resolution pixels, recorded by `sepconv prepare`) is at most this. The kernels reach
      K // 2 pixels from the middle frame, 2 * (K // 2) = 50 from x0 to x1 at K = 51: a patch
      moving farther cannot be followed, and its best L1 answer is a wide kernel, which is blur.
      None: every patch. (`steps_per_epoch`'s default still counts every patch.)
    alternate_min_flow: The alternate crops (only) come from the patches that move at least
      this much (pixels, as `max_flow`), so that the large crops, which can hold an object and
      its displacement at once, carry the large motion, while the main crops keep every patch.
      None: every patch (up to `max_flow`).
    synthetic_objects: The share of training crops (both sizes with mixed crops) over which a
      rigid elliptical object moving at constant velocity is pasted, 2 to 24 px from the middle
      frame in a random direction (at most a fifth of the crop side), its texture the middle
      frame's turned by 180 degrees (`sepconv_data.pipeline.random_moving_object`): large motion
      within the kernels' reach whose answer, one sharp object, is known exactly. 0: off.
    all_orientations, channel_permutation: More label-preserving augmentation: each crop turned
      or mirrored by one of the square's eight symmetries instead of the default four (identity,
      rot90, the two flips), and its RGB channels put in one of their six orders, the same for
      the three frames (`sepconv_data.pipeline.augment`). Off: the data stream is the one a seed
      gave before these options existed.
    prealign: Pre-alignment strength in [0, 1] (`sepconv_jax.inference.alignment`): the input
      frames of every training and validation crop (before cropping) and of the full-frame
      validation are warped that share of the way to the middle along their DIS flow, so that
      the network learns to finish what the flow started, as the `Interpolator` runs it with
      `align` set to the same strength (`recommended_align` reads it from the checkpoint). The
      full validation's kernel figures still measure against the whole motion. 0: off. A
      network with `unaligned_sources` or `captured_input` (`SepConvConfig`) gets the captured
      frames as well.
    unaligned_lr_scale: The learning rate of what only those captured frames use (their
      channels of the encoder's first convolution, their kernel subnets) times this
      (`steps.unaligned_update_scales`): started at zero from a network without them, they see a
      rare signal (where the flow fails), and AdaMax, whose steps shrink after a large gradient,
      moves them slowly. 1: the plain optimizer.
    epochs, steps: Length of the run. `steps` wins when set; otherwise `epochs` epochs of
      `steps_per_epoch` steps (by default the training split's size // batch_size).
    seed: Fixes the initialisation, the data order and augmentation, and the state's RNG.
    data_dir: The prepared `sepconv_triplets` cache (`sepconv prepare`).
    checkpoint_every: Save every this many steps (besides each epoch end and the last step).
    keep_checkpoints: How many of the latest checkpoints to keep; the best by validation PSNR is
      kept as well.
    log_every: Steps between progress/TensorBoard updates and non-finite checks.
    validation_batch_size, validation_batches: Validation on centre `crop_size` crops of the
      validation split, at most `validation_batches` batches (None: the whole split).
    num_samples: Full frames interpolated at each validation and written as images.
    full_validation, full_validation_gap: At each validation, also score this many full-frame
      triplets (n - gap, n, n + gap) of the held-out sequences, overall and by motion magnitude
      (`sepconv_jax.evaluation.psnr_by_motion`), and measure how far the kernels follow that
      motion ("followed" of `sepconv_jax.evaluation.kernels`); the best checkpoint is then the one
      with the highest full-frame PSNR. 0: off (ranked by the validation crops).
    shuffle_buffer, data_threads: tf.data settings (`sepconv_data.pipeline.train_dataset`).
    centroid_weight, centroid_steps: Flow-guided kernels: add `centroid_weight` times
      `sepconv_jax.training.losses.kernel_centroid_loss` (kernel centroids against the optical flow from
      the true middle frame, computed per crop by the data pipeline), falling linearly to 0 at
      step `centroid_steps` (None: constant). 0: off.
    centroid_flows: The flows that loss pulls towards: "dis" (OpenCV's DIS on every crop, where
      it passes its forward-backward check) or "objects" (only the synthetic objects' pixels,
      whose flow is exact: `sepconv_data.pipeline.object_flows`; needs `synthetic_objects`).
    motion_weight: Weight the l1 loss by each pixel's motion (`losses.make_motion_weighted_l1`:
      1 + `motion_weight` x min(1, motion / 16 px), the DIS flow from the true middle frame to the
      (pre-aligned) crop's frames, computed by the data pipeline as for the centroid term), so
      that the few pixels that move most carry more of the signal. 0: plain l1.
    ema_decay: Polyak averaging: keep an exponential moving average of the parameters, updated
      after every step as `ema_decay * average + (1 - ema_decay) * parameters` from the run's
      initial parameters (so at 0.999 it spans about the last 1,000 steps, and early on it is a
      blend with the starting point). The average is what is validated, ranked and saved as each
      checkpoint's "model" (what `load_model`, `sepconv export`, `--init-from` and the benchmarks
      read); the raw parameters are saved beside it for `--resume`. None: off.
    precision: The convolutions' compute precision, "float32" or "bfloat16" (bfloat16 operands,
      float32 accumulation; parameters, optimizer state and checkpoints stay float32; see
      `pallas_kernels.conv`). None: the backend's default, resolved and recorded in the run's
      config.json when training starts.
  """
  model: SepConvConfig = SepConvConfig()
  loss: str = "l1"
  nu: float = 1e-5
  vgg_weights: str | None = None
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  warmup_steps: int = 0
  decay_start: int | None = None
  decay_end: int | None = None
  final_learning_rate: float = 1e-5
  batch_size: int = 16
  crop_size: int = 128
  min_scale: float = 1.0
  alternate_crop_size: int | None = None
  alternate_min_scale: float = 1.0
  max_flow: float | None = None
  alternate_min_flow: float | None = None
  synthetic_objects: float = 0.0
  all_orientations: bool = False
  channel_permutation: bool = False
  prealign: float = 0.0
  unaligned_lr_scale: float = 1.0
  epochs: int = 50
  steps: int | None = None
  steps_per_epoch: int | None = None
  seed: int = 0
  data_dir: str | None = "datasets/davis_tfds"  # sepconv prepare's default --out
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  log_every: int = 10
  validation_batch_size: int = 16
  validation_batches: int | None = None
  num_samples: int = 3
  full_validation: int = 0
  full_validation_gap: int = 1
  shuffle_buffer: int = 1024
  data_threads: int = 2
  centroid_weight: float = 0.0
  centroid_steps: int | None = None
  centroid_flows: str = "dis"
  motion_weight: float = 0.0
  ema_decay: float | None = None
  precision: str | None = None

  def __post_init__(self):
    if isinstance(self.model, dict):
      object.__setattr__(self, "model", SepConvConfig.from_dict(self.model))
    if self.loss not in LOSSES:
      raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
    positive = ("batch_size", "crop_size", "epochs", "checkpoint_every", "keep_checkpoints",
                "log_every", "validation_batch_size", "data_threads")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must not be negative, got {self.warmup_steps}")
    for name in ("steps", "steps_per_epoch", "validation_batches"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
    if (self.decay_start is None) != (self.decay_end is None):
      raise ValueError("decay_start and decay_end go together (set both or neither)")
    if self.decay_start is not None:
      if not self.warmup_steps <= self.decay_start < self.decay_end:
        raise ValueError(f"the decay must start after the warm-up ({self.warmup_steps} steps) "
                         f"and end after it starts, got steps {self.decay_start} to "
                         f"{self.decay_end}")
      if not 0 <= self.final_learning_rate <= self.learning_rate:
        raise ValueError(f"final_learning_rate must be in [0, learning_rate], got "
                         f"{self.final_learning_rate}")
    if self.crop_size % 32:
      raise ValueError(f"crop_size must be a multiple of 32 (the network's five poolings), got "
                       f"{self.crop_size}")
    for name in ("min_scale", "alternate_min_scale"):
      if not 0.0 < getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
    if self.alternate_crop_size is not None:
      if self.alternate_crop_size < 32 or self.alternate_crop_size % 32:
        raise ValueError(f"alternate_crop_size must be a positive multiple of 32, got "
                         f"{self.alternate_crop_size}")
      pixels = self.batch_size * self.crop_size ** 2
      if pixels % self.alternate_crop_size ** 2:
        raise ValueError(f"batch_size x crop_size^2 ({self.batch_size} x {self.crop_size}^2) "
                         f"must be a multiple of alternate_crop_size^2 "
                         f"({self.alternate_crop_size}^2), so that both kinds of step see as "
                         f"many pixels")
    if self.max_flow is not None and not self.max_flow > 0:
      raise ValueError(f"max_flow must be positive (pixels) or None, got {self.max_flow}")
    if self.alternate_min_flow is not None:
      if self.alternate_crop_size is None:
        raise ValueError("alternate_min_flow needs alternate_crop_size (it picks those crops' "
                         "patches)")
      if not 0 < self.alternate_min_flow <= (self.max_flow or float("inf")):
        raise ValueError(f"alternate_min_flow must be positive (pixels) and at most max_flow "
                         f"({self.max_flow}), got {self.alternate_min_flow}")
    if not 0.0 <= self.synthetic_objects <= 1.0:
      raise ValueError(f"synthetic_objects must be in [0, 1], got {self.synthetic_objects}")
    if not 0.0 <= self.prealign <= 1.0:
      raise ValueError(f"prealign must be in [0, 1], got {self.prealign}")
    if self.unaligned_lr_scale <= 0 or (self.unaligned_lr_scale != 1.0
                                        and not self.model.reads_captured_frames):
      raise ValueError(f"unaligned_lr_scale must be positive, and 1 for a network without "
                       f"unaligned sources or captured input, got {self.unaligned_lr_scale}")
    if self.model.reads_captured_frames and not self.prealign:
      raise ValueError("a network with unaligned sources or captured input needs prealign > 0 "
                       "(without pre-alignment its two inputs are the same frames)")
    if self.num_samples < 0 or self.nu < 0 or self.full_validation < 0:
      raise ValueError("num_samples, full_validation and nu must not be negative")
    if self.centroid_weight < 0 or (self.centroid_steps is not None and self.centroid_steps < 1):
      raise ValueError(f"centroid_weight must not be negative and centroid_steps must be "
                       f"positive, got {self.centroid_weight} and {self.centroid_steps}")
    if self.centroid_flows not in CENTROID_FLOWS:
      raise ValueError(f"centroid_flows must be one of {CENTROID_FLOWS}, got "
                       f"{self.centroid_flows!r}")
    if self.centroid_flows == "objects" and self.centroid_weight and not self.synthetic_objects:
      raise ValueError("centroid_flows 'objects' needs synthetic_objects > 0 (the objects' "
                       "flows are the targets)")
    if self.motion_weight < 0 or (self.motion_weight and self.loss != "l1"):
      raise ValueError(f"motion_weight must not be negative, and weights only the l1 loss, got "
                       f"{self.motion_weight} with loss {self.loss!r}")
    if self.motion_weight and self.centroid_flows == "objects":
      raise ValueError("motion_weight needs the optical flows of every crop (centroid_flows "
                       "'dis'), not the synthetic objects' only")
    if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
    if self.full_validation_gap < 1:
      raise ValueError(f"full_validation_gap must be positive, got {self.full_validation_gap}")
    if self.precision is not None and self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {PRECISIONS} (or None for the default), got "
                       f"{self.precision!r}")

  @property
  def alternate_batch_size(self) -> int | None:
    """The batch of the alternate steps: as many pixels as `batch_size` crops of `crop_size`."""
    if self.alternate_crop_size is None:
      return None
    return self.batch_size * self.crop_size ** 2 // self.alternate_crop_size ** 2

  def with_overrides(self, **overrides: Any) -> TrainConfig:
    """A copy with the given fields replaced (None values are ignored: flags not given)."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "model": self.model.to_dict()}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
    return cls(**values)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _default() -> TrainConfig:
  return TrainConfig()


def _frame_average() -> TrainConfig:
  return TrainConfig(model=SepConvConfig(frame_average_init=True), learning_rate=2e-4)


def _cpu() -> TrainConfig:
  return _frame_average().with_overrides(
      model=SepConvConfig(frame_average_init=True, kernel_normalisation=True),
      learning_rate=1e-3, warmup_steps=200, batch_size=16, crop_size=64, min_scale=0.5,
      steps=20000, steps_per_epoch=200, checkpoint_every=100, keep_checkpoints=40,
      validation_batches=8, num_samples=1)


def _tiny() -> TrainConfig:
  return TrainConfig(model=SepConvConfig.tiny(frame_average_init=True), learning_rate=2e-3,
                     batch_size=4, crop_size=32, epochs=2, steps_per_epoch=10,
                     checkpoint_every=5, keep_checkpoints=2, log_every=1,
                     validation_batch_size=4, validation_batches=2, num_samples=1,
                     shuffle_buffer=16, data_threads=1)


CONFIGS = {"default": _default, "frame_average": _frame_average, "cpu": _cpu, "tiny": _tiny}


def get_config(name: str = "default") -> TrainConfig:
  """The named configuration (one of `CONFIGS`)."""
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
  return CONFIGS[name]()
