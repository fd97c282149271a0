"""tf.data pipelines over the `sepconv_triplets` cache: batches `{"x0", "x1", "y"}` for training.

Conventions: every batch is a dict of NHWC float32 tensors in [0, 1], RGB; `x0` and `x1` are the
input frames, `y` the middle frame (the target).

Training (`train_dataset`): read this host's share of the split -> shuffle -> repeat -> per
example, jointly for the three frames: with `min_scale` < 1, a random downscale by a factor drawn
uniformly from [min_scale, 1] (area filter; it shrinks the motion as much as the content, so that
small-motion footage is better represented), then a random `crop_size` square crop, one of {identity,
rot90, vertical flip, horizontal flip} with equal probability (or, with `all_orientations`, one
of the square's eight rotations and reflections), optionally a synthetic rigid object moving
across the crop (`synthetic_objects`: large motion whose answer is known exactly), then a
temporal swap of x0 and x1 with probability 1/2, optionally the RGB channels in a random order
(`channel_permutation`: one of the six, the same for the three frames) -> batch -> prefetch. The
crop comes first and is square, because rot90 swaps height and width. The two options are off by
default, so a seed gives the same stream as before they existed.

Determinism: every random choice is a stateless TF op (`tf.random.stateless_*`) whose seed is
derived from (seed, process_index, position of the example in this host's stream) with
`stateless_fold_in`; the position comes from `Dataset.enumerate`, file order and shuffling are
seeded too. So a seed fixes the whole stream, and `augment(example, seed)` gives the same result
run eagerly as inside tf.data.

Flows (`flows=True`, for the kernel-centroid loss): after augmentation, OpenCV's DIS optical flow
from the middle frame to each input frame of the crop, with a forward-backward consistency mask
(`flow.middle_flows`): "flow0", "flow1" (H, W, 2) float32 pixels (dx, dy) and "valid0",
"valid1" (H, W) float32 0/1. Computed on the final crop, so they follow every augmentation (the
downscale, orientation and temporal swap) by construction; privileged information, since they
use the true middle frame, for training only.

Multi-host: `process_index` / `process_count` (the training code passes `jax.process_index()` and
`jax.process_count()`; this package does not import jax) select an even, disjoint share of the
examples with `tfds.even_splits`; hosts also fold their index into the augmentation seeds.

Threads: tf.data shares the machine with the training step, so its private thread pool and its
autotuning CPU budget are capped at `threads` (default 2). Even so, on 2 cores it delivers far more
batches than a CPU training step consumes (see benchmarks/bench_data_pipeline.py).
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from . import builder, flow

FRAMES = ("x0", "y", "x1")  # temporal order in the stacked (3, H, W, C) representation
FLOW_KEYS = ("flow0", "valid0", "flow1", "valid1")  # `add_flows` and `object_flows`
IDENTITY, ROT90, FLIP_UP_DOWN, FLIP_LEFT_RIGHT = range(4)
_SEED_SALT = 0x5EC0  # keeps pipeline seeds apart from other users of the same integer seed


def element_seed(seed: int, process_index: int, index) -> tf.Tensor:
  """The stateless seed (shape [2], int64) of the `index`-th example of a host's stream."""
  base = tf.constant([seed, _SEED_SALT], tf.int64)
  base = tf.random.experimental.stateless_fold_in(base, tf.cast(process_index, tf.int64))
  return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def stack_frames(example: dict) -> tf.Tensor:
  """(3, H, W, C) in temporal order x0, y, x1 (the dtype of the frames)."""
  # convert_to_tensor first: tf.stack of a list of uint8 NumPy arrays would give int32.
  return tf.stack([tf.convert_to_tensor(example[k]) for k in FRAMES])


def unstack_frames(frames: tf.Tensor) -> dict:
  """{"x0", "x1", "y"} float32 in [0, 1] from (3, H, W, C) uint8 (or float already in [0, 1]);
  "y" keeps 3 channels (of 6 with `prealign_frames(keep_captured=True)`, the second three a copy)."""
  if frames.dtype == tf.uint8:
    frames = tf.cast(frames, tf.float32) / 255.0
  return {"x0": frames[0], "x1": frames[2], "y": frames[1][..., :3]}


def random_crop(frames: tf.Tensor, seed, size: int) -> tf.Tensor:
  """The same random size x size window of every frame of (3, H, W, C)."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  tf.debugging.assert_greater_equal(tf.minimum(height, width), size,
                                    message=f"frames smaller than the crop size {size}")
  top = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=height - size + 1,
                                    dtype=tf.int32)
  left = tf.random.stateless_uniform([], seeds[1], minval=0, maxval=width - size + 1,
                                     dtype=tf.int32)
  crop = frames[:, top:top + size, left:left + size, :]
  return tf.ensure_shape(crop, [3, size, size, frames.shape[-1]])


def center_crop(frames: tf.Tensor, size: int) -> tf.Tensor:
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  top, left = (height - size) // 2, (width - size) // 2
  crop = frames[:, top:top + size, left:left + size, :]
  return tf.ensure_shape(crop, [3, size, size, frames.shape[-1]])


def orient(frames: tf.Tensor, op) -> tf.Tensor:
  """Applies IDENTITY, ROT90 (counter-clockwise), FLIP_UP_DOWN or FLIP_LEFT_RIGHT to every frame."""
  return tf.switch_case(tf.cast(op, tf.int32), [
      lambda: frames,
      lambda: tf.image.rot90(frames, k=1),
      lambda: tf.reverse(frames, axis=[1]),
      lambda: tf.reverse(frames, axis=[2]),
  ])


def _check_square(frames: tf.Tensor) -> None:
  if frames.shape[1] is not None and frames.shape[1] != frames.shape[2]:
    raise ValueError(f"random orientations need square frames (rot90 swaps H and W), got "
                     f"{frames.shape}: crop first")


def random_orientation(frames: tf.Tensor, seed) -> tf.Tensor:
  """One of the four orientations with probability 1/4 each; frames must be square."""
  _check_square(frames)
  op = tf.random.stateless_uniform([], seed, minval=0, maxval=4, dtype=tf.int32)
  return orient(frames, op)


def dihedral(frames: tf.Tensor, op) -> tf.Tensor:
  """The square's symmetry `op` in 0..7 applied to every frame: rot90 (counter-clockwise) `op % 4`
  times, then for `op` >= 4 a horizontal flip."""
  op = tf.cast(op, tf.int32)
  turned = tf.image.rot90(frames, k=op % 4)
  return tf.cond(op >= 4, lambda: tf.reverse(turned, axis=[2]), lambda: turned)


def random_dihedral(frames: tf.Tensor, seed) -> tf.Tensor:
  """One of the eight rotations and reflections with probability 1/8 each; frames square."""
  _check_square(frames)
  op = tf.random.stateless_uniform([], seed, minval=0, maxval=8, dtype=tf.int32)
  return dihedral(frames, op)


CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def random_channel_order(frames: tf.Tensor, seed) -> tf.Tensor:
  """Frames (..., 3) with their channels in one of the six orders (probability 1/6 each), the
  same for every frame: motion does not depend on colour, so this is new colour statistics for
  free (RIFE's training reverses the channel order at random)."""
  choice = tf.random.stateless_uniform([], seed, minval=0, maxval=len(CHANNEL_ORDERS),
                                       dtype=tf.int32)
  order = tf.gather(tf.constant(CHANNEL_ORDERS), choice)
  # Frames of 6 channels (pre-aligned and captured, `prealign_frames`): the same order in both.
  order = tf.concat([order + offset for offset in range(0, frames.shape[-1], 3)], axis=0)
  return tf.gather(frames, order, axis=-1)


def _swap_draw(seed) -> tf.Tensor:
  """Whether `random_temporal_swap` swaps for this seed (a boolean scalar)."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=2, dtype=tf.int32) == 1


def random_temporal_swap(frames: tf.Tensor, seed) -> tf.Tensor:
  """Swaps x0 and x1 with probability 1/2 (the middle frame stays)."""
  order = tf.where(_swap_draw(seed), tf.constant([2, 1, 0]), tf.constant([0, 1, 2]))
  return tf.gather(frames, order)


def random_downscale(frames: tf.Tensor, seed, min_scale: float, min_size: int) -> tf.Tensor:
  """Frames (3, H, W, C) resized by one random factor in [min_scale, 1] (area filter), float32.

  The factor is raised where needed so that the shorter side stays at least `min_size`.
  """
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  shorter = tf.cast(tf.minimum(height, width), tf.float32)
  low = tf.maximum(tf.constant(min_scale, tf.float32), min_size / shorter)
  scale = tf.random.stateless_uniform([], seed, minval=0.0, maxval=1.0) * (1.0 - low) + low
  size = tf.cast(tf.math.ceil(tf.cast(tf.stack([height, width]), tf.float32) * scale), tf.int32)
  size = tf.maximum(size, min_size)
  resized = tf.image.resize(tf.cast(frames, tf.float32), size, method="area")
  # Area sums can overshoot the input range by rounding (255.0001).
  return tf.clip_by_value(resized, 0.0, 255.0)


# Synthetic moving objects: the largest displacement from the middle frame, in pixels (the 51-tap
# kernels reach 25) and as a share of the crop side (so that the object fits at both ends).
OBJECT_MAX_SHIFT, OBJECT_MAX_SHIFT_SHARE = 24, 0.2


def object_mask(size: int, center, radii) -> tf.Tensor:
  """(S, S) float32 coverage of the ellipse at `center` (y, x) with `radii` (ry, rx): 1 inside,
  0 outside, a 1-pixel ramp at the edge."""
  rows = tf.range(size, dtype=tf.float32)[:, None]
  cols = tf.range(size, dtype=tf.float32)[None, :]
  center, radii = tf.cast(center, tf.float32), tf.cast(radii, tf.float32)
  distance = tf.sqrt(((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2)
  return tf.clip_by_value((1.0 - distance) * tf.reduce_min(radii) + 0.5, 0.0, 1.0)


def object_flows(size: int, center, radii, shift) -> tuple[tf.Tensor, ...]:
  """The exact flows of `paste_object`'s object, in `sepconv_data.flow.middle_flows`' format:
  (flow0, valid0, flow1, valid1), flow (S, S, 2) float32 (dx, dy) pixels from the middle frame
  to x0 (-shift) and to x1 (+shift), valid (S, S) float32 1 where the middle frame shows only the
  object (inside its edge ramp), 0 elsewhere (the background's flow is not known)."""
  valid = tf.cast(object_mask(size, center, radii) >= 1.0, tf.float32)
  motion = tf.cast(tf.stack([shift[1], shift[0]]), tf.float32) * valid[..., None]
  return -motion, valid, motion, valid


def paste_object(frames: tf.Tensor, center, radii, shift) -> tf.Tensor:
  """Frames (3, S, S, C) float in [0, 1] with a rigid elliptical object moving over them at
  constant velocity: centred at `center` (y, x) in the middle frame, at `center - shift` in x0 and
  `center + shift` in x1 (`shift`: integer pixels (dy, dx); `radii`: (ry, rx)). Its texture is the
  middle frame turned by 180 degrees, translated with it: so x0(p - shift) = y(p) = x1(p + shift)
  inside the object (`object_flows`). The edge is a 1-pixel ramp (`object_mask`); the caller
  keeps the object inside the frame.
  """
  size = frames.shape[1]
  texture = tf.reverse(frames[1], axis=[0, 1])
  center = tf.cast(center, tf.float32)
  shift = tf.cast(shift, tf.int32)
  out = []
  for index, t in enumerate((-1, 0, 1)):
    mask = object_mask(size, center + t * tf.cast(shift, tf.float32), radii)[..., None]
    layer = tf.roll(texture, shift=t * shift, axis=[0, 1])
    out.append(mask * layer + (1.0 - mask) * frames[index])
  return tf.stack(out)


def random_object(seed, size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(center, radii, shift) for `paste_object` in a size x size crop: a random ellipse (radii S/10
  to S/4), direction and displacement from the middle frame (2 to min(24, S/5) px, rounded to
  whole pixels per axis), placed so that it stays inside the crop at all three times."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  top = float(min(OBJECT_MAX_SHIFT, int(OBJECT_MAX_SHIFT_SHARE * size)))
  magnitude = tf.random.stateless_uniform([], seeds[0], minval=2.0, maxval=max(top, 2.0))
  angle = tf.random.stateless_uniform([], seeds[1], minval=0.0, maxval=6.283185307179586)
  shift = tf.cast(tf.round(magnitude * tf.stack([tf.sin(angle), tf.cos(angle)])), tf.int32)
  radii = tf.random.stateless_uniform([2], seeds[2], minval=size / 10, maxval=size / 4)
  # The centre's range: the ellipse (and its edge ramp) inside the crop at both ends of the motion.
  margin = radii + tf.abs(tf.cast(shift, tf.float32)) + 2.0
  center = margin + tf.random.stateless_uniform([2], seeds[3]) * tf.maximum(size - 2 * margin, 0.0)
  return center, radii, shift


def random_moving_object(frames: tf.Tensor, seed) -> tf.Tensor:
  """`paste_object` with the object of `random_object`."""
  return paste_object(frames, *random_object(seed, frames.shape[1]))


def prealign_frames(frames: tf.Tensor, strength: float, keep_captured: bool = False
                    ) -> tf.Tensor:
  """(3, H, W, 3) frames (uint8, or float32 in [0, 1]) with x0 and x1 warped `strength` of the way
  to the middle along the DIS flow between them (`flow.align_to_middle`, as the `Interpolator`'s
  pre-alignment does to whole frames), float32 in [0, 1]; y untouched. `keep_captured` (for a
  network that reads them too): (3, H, W, 6), each frame followed on channels by itself as
  captured (y by a copy of itself)."""
  if frames.dtype == tf.uint8:
    frames = tf.cast(frames, tf.float32) / 255.0
  aligned = [frames[0], frames[2]]
  if strength > 0.0:
    aligned = tf.numpy_function(lambda a, b: flow.align_to_middle(a, b, strength),
                                [frames[0], frames[2]], [tf.float32, tf.float32], stateful=False)
    aligned = [tf.ensure_shape(a, frames.shape[1:]) for a in aligned]
  out = tf.stack([aligned[0], frames[1], aligned[1]])
  return tf.concat([out, frames], axis=-1) if keep_captured else out


def augment(example: dict, seed, crop_size: int = 128, min_scale: float = 1.0,
            synthetic_objects: float = 0.0, with_object_flows: bool = False,
            all_orientations: bool = False, channel_permutation: bool = False,
            prealign: float = 0.0, keep_captured: bool = False) -> dict:
  """Training augmentation of one example {"x0", "y", "x1"} (uint8 (H, W, 3)) -> model inputs;
  with probability `synthetic_objects`, a rigid object moving by up to 24 px from the middle frame
  is pasted over the crop (`random_moving_object`), and `with_object_flows` adds its exact flows
  (`object_flows`, after the temporal swap; valid nowhere in a crop without an object).
  `all_orientations` draws from the eight symmetries of the square instead of four
  (`random_dihedral`); `channel_permutation` shuffles the RGB channels (`random_channel_order`).
  `prealign` > 0 pre-aligns x0 and x1 by that strength (`prealign_frames`) after the downscale and
  before the crop, so that the flow sees the whole patch; `keep_captured` keeps the captured
  x0 and x1 behind them on channels (6 each)."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  frames = stack_frames(example)
  if min_scale < 1.0:
    # A seed of its own (folded in, not a 4th split) keeps the other draws as without scaling.
    # Resized frames are float32 in [0, 255]; unstack_frames divides by 255 only for uint8.
    scale_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    frames = random_downscale(frames, scale_seed, min_scale, crop_size) / 255.0
  if prealign > 0.0 or keep_captured:
    frames = prealign_frames(frames, prealign, keep_captured=keep_captured)
  frames = random_crop(frames, seeds[0], crop_size)
  frames = (random_dihedral if all_orientations else random_orientation)(frames, seeds[1])
  flows = None
  if synthetic_objects > 0.0:
    object_seed = tf.random.experimental.stateless_fold_in(seed, 2)  # the other draws unchanged
    draw_seed, object_seed = tf.unstack(tf.random.experimental.stateless_split(object_seed, 2))
    if frames.dtype == tf.uint8:
      frames = tf.cast(frames, tf.float32) / 255.0
    paste = tf.random.stateless_uniform([], draw_seed) < synthetic_objects
    size = frames.shape[1]

    def pasted():
      placed = random_object(object_seed, size)
      return paste_object(frames, *placed), object_flows(size, *placed)

    def plain():
      none = tf.zeros([size, size, 2]), tf.zeros([size, size])
      return frames, none + none

    frames, flows = tf.cond(paste, pasted, plain)
  frames = random_temporal_swap(frames, seeds[2])
  if channel_permutation:  # its own folded-in seed: the other draws stay as without it
    frames = random_channel_order(frames, tf.random.experimental.stateless_fold_in(seed, 3))
  out = unstack_frames(frames)
  if with_object_flows:
    if flows is None:
      raise ValueError("object flows need synthetic_objects > 0")
    # The swap exchanges x0 and x1, so their flows too.
    swapped = tf.cond(_swap_draw(seeds[2]), lambda: flows[2:] + flows[:2], lambda: tuple(flows))
    out.update(zip(FLOW_KEYS, swapped))
  return out



def add_flows(example: dict) -> dict:
  """`example` with the flows from "y" to "x0" and "x1" and their masks (module docstring)."""
  to_uint8 = lambda frame: tf.cast(tf.round(tf.clip_by_value(frame, 0.0, 1.0) * 255.0), tf.uint8)
  # Of the (pre-aligned) frames the first kernels apply to: the first three channels.
  outputs = tf.numpy_function(flow.middle_flows,
                              [to_uint8(example[k][..., :3]) for k in ("x0", "y", "x1")],
                              [tf.float32] * 4, stateful=False)
  height, width = example["y"].shape[:2]
  shapes = ([height, width, 2], [height, width]) * 2
  return {**example, **{key: tf.ensure_shape(value, shape)
                        for key, value, shape in zip(FLOW_KEYS, outputs, shapes)}}


def pipeline_options(threads: int = 2) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.cpu_budget = threads
  return options


def _host_split(split: str, process_index: int, process_count: int, drop_remainder: bool):
  if not 0 <= process_index < process_count:
    raise ValueError(f"{process_index=} must be in [0, {process_count=})")
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def _check_crop(dataset: tf.data.Dataset, crop_size: int) -> None:
  height, width = dataset.element_spec["y"].shape[:2]
  if height is not None and width is not None and crop_size > min(height, width):
    raise ValueError(f"{crop_size=} is larger than the cached patches ({height}x{width})")


def read_split(data_dir: str | os.PathLike, split: str, *, process_index: int = 0,
               process_count: int = 1, shuffle_files: bool = False, seed: int = 0,
               drop_remainder: bool = True, config: str | None = None,
               max_flow: float | None = None, min_flow: float | None = None
               ) -> tf.data.Dataset:
  """This host's share of a split of the prepared cache, as {"x0", "y", "x1"} uint8 examples;
  with `max_flow` (`min_flow`), only the patches whose cached mean |flow| from x0 to x1
  (full-resolution pixels) is at most (at least) that."""
  for name, value in (("max_flow", max_flow), ("min_flow", min_flow)):
    if value is not None and not value > 0:
      raise ValueError(f"{name}={value} must be positive")
  cache = builder.load_builder(data_dir, config)
  if split not in cache.info.splits:
    raise builder.CacheError(f"the cache in {data_dir} has no {split!r} split "
                             f"(it has {', '.join(cache.info.splits)})")
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
  dataset = cache.as_dataset(
      split=_host_split(split, process_index, process_count, drop_remainder),
      shuffle_files=shuffle_files, read_config=read_config,
      decoders={"sequence": tfds.decode.SkipDecoding()})
  if max_flow is not None:
    dataset = dataset.filter(lambda example: example["flow"] <= max_flow)
  if min_flow is not None:
    dataset = dataset.filter(lambda example: example["flow"] >= min_flow)
  return dataset.map(lambda example: {k: example[k] for k in FRAMES})


def train_dataset(data_dir: str | os.PathLike, *, batch_size: int = 16, crop_size: int = 128,
                  seed: int = 0, process_index: int = 0, process_count: int = 1,
                  shuffle_buffer: int = 1024, threads: int = 2, repeat: bool = True,
                  split: str = builder.TRAIN, config: str | None = None,
                  min_scale: float = 1.0, flows: bool = False,
                  max_flow: float | None = None, min_flow: float | None = None,
                  synthetic_objects: float = 0.0,
                  object_flows_only: bool = False, all_orientations: bool = False,
                  channel_permutation: bool = False, prealign: float = 0.0,
                  keep_captured: bool = False) -> tf.data.Dataset:
  """Endless (unless repeat=False) augmented training batches for this host, fixed by `seed`;
  with `flows`, also the optical flows of each crop (module docstring), or with
  `object_flows_only` instead the exact flows of the pasted objects only (`augment`); with
  `max_flow` (`min_flow`), from the patches that move at most (at least) that much only
  (`read_split`); with `synthetic_objects`, that share of the crops carries a pasted moving
  object, and `all_orientations` and `channel_permutation` add symmetries and colour orders, and
  `prealign` pre-aligns the input frames, keeping the captured ones too with `keep_captured`
  (`augment`)."""
  if not 0.0 < min_scale <= 1.0:
    raise ValueError(f"{min_scale=} must be in (0, 1]")
  if not 0.0 <= synthetic_objects <= 1.0:
    raise ValueError(f"{synthetic_objects=} must be in [0, 1]")
  if not 0.0 <= prealign <= 1.0:
    raise ValueError(f"{prealign=} must be in [0, 1]")
  if flows and object_flows_only and not synthetic_objects:
    raise ValueError("object_flows_only needs synthetic_objects > 0 (the objects' flows)")
  dataset = read_split(data_dir, split, process_index=process_index,
                       process_count=process_count, shuffle_files=True, seed=seed,
                       drop_remainder=True, config=config, max_flow=max_flow,
                       min_flow=min_flow)
  _check_crop(dataset, crop_size)
  if (max_flow, min_flow) != (None, None) and not any(True for _ in dataset.take(1)):
    # An empty filtered split would make the repeated pipeline below spin forever.
    bounds = " and ".join(f"{word} {value:g} px" for word, value in
                          (("at least", min_flow), ("at most", max_flow)) if value is not None)
    raise ValueError(f"no training patch in {os.fspath(data_dir)} moves {bounds} between its "
                     "input frames")
  if shuffle_buffer > 1:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.enumerate().map(
      lambda index, example: augment(example, element_seed(seed, process_index, index),
                                     crop_size, min_scale, synthetic_objects,
                                     flows and object_flows_only, all_orientations,
                                     channel_permutation, prealign, keep_captured),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if flows and not object_flows_only:
    dataset = dataset.map(add_flows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options(threads))


def alternate(*datasets: tf.data.Dataset) -> tf.data.Dataset:
  """Elements of each dataset in turn (a, b, a, b, ...), for batches of different shapes (mixed
  crop sizes). Deterministic like its inputs, so `skip` resumes it exactly; endless inputs
  (repeat=True) keep it endless."""
  order = tf.data.Dataset.range(len(datasets)).repeat()
  return tf.data.Dataset.choose_from_datasets(list(datasets), order, stop_on_empty_dataset=True)


def validation_dataset(data_dir: str | os.PathLike, *, batch_size: int = 16,
                       crop_size: int | None = None, process_index: int = 0,
                       process_count: int = 1, threads: int = 2, drop_remainder: bool = False,
                       split: str = builder.VALIDATION, config: str | None = None,
                       prealign: float = 0.0, keep_captured: bool = False
                       ) -> tf.data.Dataset:
  """Validation batches: no augmentation, fixed order, the full patch or its centre crop (with
  `prealign` and `keep_captured`, of the pre-aligned patch, as in `augment`).

  With several hosts each reads an even share; `drop_remainder=False` keeps every example (hosts
  may then see one batch more or less, and the last batch may be smaller).
  """
  dataset = read_split(data_dir, split, process_index=process_index,
                       process_count=process_count, shuffle_files=False,
                       drop_remainder=drop_remainder, config=config)
  if crop_size is not None:
    _check_crop(dataset, crop_size)

  def prepare(example):
    frames = stack_frames(example)
    if prealign > 0.0 or keep_captured:
      frames = prealign_frames(frames, prealign, keep_captured=keep_captured)
    if crop_size is not None:
      frames = center_crop(frames, crop_size)
    return unstack_frames(frames)

  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(pipeline_options(threads))
