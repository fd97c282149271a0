"""tf.data augmentation: eager == tf.data for a seed, triplets stay aligned (data.pipeline)."""

from __future__ import annotations

import collections
import functools

import numpy as np
import pytest
import tensorflow as tf

from sepconv_data import pipeline

SIZE = 40  # small synthetic patches keep these tests fast
CROP = 32


def _coordinate_triplet():
  """Pixels that name their source: channel 0 = row, 1 = column, 2 = 10 * frame index + 1."""
  rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  frames = [np.stack([rows, cols, np.full_like(rows, 10 * t + 1)], axis=-1).astype(np.uint8)
            for t in range(3)]
  return dict(zip(pipeline.FRAMES, frames))


def _moving_square_triplet(top=10, left=6, step=5, side=8):
  """A white square moving right by `step` px per frame on black: x0, y, x1."""
  frames = []
  for t in range(3):
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    frame[top:top + side, left + step * t:left + step * t + side] = 255
    frames.append(frame)
  return dict(zip(pipeline.FRAMES, frames))


def _in_dataset(function, example, seed):
  @tf.autograph.experimental.do_not_convert
  def apply(e):
    return function(e, seed)

  return next(iter(tf.data.Dataset.from_tensors(example).map(apply)))


def _numpy(tree):
  return tf.nest.map_structure(lambda t: t.numpy(), tree)


SEEDS = [tf.constant([0, 0], tf.int64), tf.constant([7, 3], tf.int64),
         *(pipeline.element_seed(5, 1, i) for i in range(8))]


@pytest.mark.parametrize("name,function", [
    ("crop", lambda e, s: pipeline.random_crop(pipeline.stack_frames(e), s, CROP)),
    ("orientation", lambda e, s: pipeline.random_orientation(pipeline.stack_frames(e), s)),
    ("temporal_swap", lambda e, s: pipeline.random_temporal_swap(pipeline.stack_frames(e), s)),
    ("augment", lambda e, s: pipeline.augment(e, s, CROP)),
    ("augment_objects", lambda e, s: pipeline.augment(e, s, CROP, synthetic_objects=0.5)),
    ("dihedral", lambda e, s: pipeline.random_dihedral(pipeline.stack_frames(e), s)),
    ("channel_order", lambda e, s: pipeline.random_channel_order(pipeline.stack_frames(e), s)),
    ("augment_more", lambda e, s: pipeline.augment(e, s, CROP, all_orientations=True,
                                                   channel_permutation=True)),
])
def test_each_augmentation_agrees_eager_and_in_tf_data(name, function):
  example = _coordinate_triplet()
  for seed in SEEDS:
    eager = _numpy(function(example, seed))
    graph = _numpy(_in_dataset(function, example, seed))
    # The same draws; the pasted object's blend may round differently once the graph is fused.
    same = (functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)
            if name == "augment_objects" else np.testing.assert_array_equal)
    tf.nest.map_structure(same, eager, graph)
  outputs = {_numpy(function(example, s)).__repr__() for s in SEEDS}
  assert len(outputs) > 1, f"{name}: the seed changes nothing"


def test_orientations_are_the_documented_ones():
  frames = pipeline.stack_frames(_coordinate_triplet())
  reference = frames.numpy()
  expected = {pipeline.IDENTITY: reference, pipeline.ROT90: np.rot90(reference, 1, axes=(1, 2)),
              pipeline.FLIP_UP_DOWN: reference[:, ::-1], pipeline.FLIP_LEFT_RIGHT:
              reference[:, :, ::-1]}
  for op, want in expected.items():
    np.testing.assert_array_equal(pipeline.orient(frames, op).numpy(), want)


def test_dihedral_is_the_eight_symmetries_of_the_square():
  frames = pipeline.stack_frames(_coordinate_triplet())
  reference = frames.numpy()
  outputs = []
  for op in range(8):
    want = np.rot90(reference, op % 4, axes=(1, 2))
    want = want[:, :, ::-1] if op >= 4 else want
    got = pipeline.dihedral(frames, op).numpy()
    np.testing.assert_array_equal(got, want)
    outputs.append(got.tobytes())
  assert len(set(outputs)) == 8
  with pytest.raises(ValueError, match="square"):
    pipeline.random_dihedral(tf.zeros([3, 32, 40, 3], tf.uint8), SEEDS[0])


def _decode(batch):
  """From augmented coordinate frames (float in [0, 1]): rows, cols and frame ids per output."""
  return {k: np.rint(v.numpy() * 255).astype(int) for k, v in batch.items()}


def _orientations(window, all_orientations):
  """The windows each orientation of `augment` makes of `window` (rows, cols, 2), by name."""
  if not all_orientations:
    return {"identity": window, "rot90": np.rot90(window, 1, axes=(0, 1)),
            "flip_ud": window[::-1], "flip_lr": window[:, ::-1]}
  turned = {f"rot{90 * k}": np.rot90(window, k, axes=(0, 1)) for k in range(4)}
  return {**turned, **{f"{name}_flip_lr": w[:, ::-1] for name, w in turned.items()}}


@pytest.mark.parametrize("all_orientations", [False, True])
def test_augment_keeps_the_triplet_aligned_and_covers_every_choice(all_orientations):
  """Every output pixel must come from the same source pixel in all three frames, through one
  crop and one of the four (or eight) orientations; y must stay the middle frame."""
  example = _coordinate_triplet()
  seen = collections.Counter()
  for i in range(200):
    out = _decode(pipeline.augment(example, pipeline.element_seed(0, 0, i), CROP,
                                   all_orientations=all_orientations))
    rows, cols = out["y"][..., 0], out["y"][..., 1]
    for key in ("x0", "x1"):  # same source pixel in every frame
      np.testing.assert_array_equal(out[key][..., :2], out["y"][..., :2])
    assert np.all(out["y"][..., 2] == 11)  # the middle frame is always the target
    first, last = out["x0"][0, 0, 2], out["x1"][0, 0, 2]
    assert {first, last} == {1, 21} and np.all(out["x0"][..., 2] == first)
    swapped = first == 21
    # A contiguous crop: the source rows and columns form a CROP x CROP window in one of the
    # orientations.
    top, left = rows.min(), cols.min()
    assert rows.max() - top == CROP - 1 and cols.max() - left == CROP - 1
    window = np.stack(np.meshgrid(np.arange(top, top + CROP), np.arange(left, left + CROP),
                                  indexing="ij"), axis=-1)
    got = np.stack([rows, cols], axis=-1)
    orientations = _orientations(window, all_orientations)
    matches = [n for n, w in orientations.items() if np.array_equal(got, w)]
    assert len(matches) == 1
    seen[matches[0]] += 1
    seen["swapped" if swapped else "in_order"] += 1
    seen[("top", int(top))] += 1
  share = 200 // len(orientations)  # 1/4 or 1/8 each of 200 (binomial sd about 6 or 5)
  for name in orientations:
    assert share // 2 <= seen[name] <= share * 3 // 2 + 5, seen
  assert 70 <= seen["swapped"] <= 130, seen
  assert len([k for k in seen if isinstance(k, tuple)]) > 4  # crops really move


def test_channel_permutation_is_one_order_for_the_three_frames_and_changes_nothing_else():
  """Channels c of x0, y, x1 hold 10 * c + frame index: each output frame holds the same order
  of the three (all six orders occur), and undoing it gives the stream without the option."""
  frames = [np.stack([np.full((SIZE, SIZE), 10 * c + t) for c in range(3)], -1).astype(np.uint8)
            for t in range(3)]
  example = dict(zip(pipeline.FRAMES, frames))
  orders = collections.Counter()
  for i in range(120):
    seed = pipeline.element_seed(2, 0, i)
    out = _decode(pipeline.augment(example, seed, CROP, channel_permutation=True))
    plain = _decode(pipeline.augment(example, seed, CROP))
    order = tuple(out["y"][0, 0] // 10)
    assert sorted(order) == [0, 1, 2]
    for key in pipeline.FRAMES:
      assert np.all(out[key] // 10 == np.array(order))  # one order, every pixel, every frame
      np.testing.assert_array_equal(out[key][..., np.argsort(order)], plain[key])
    orders[order] += 1
  assert set(orders) == set(pipeline.CHANNEL_ORDERS) and min(orders.values()) >= 8, orders


def _centroid(frame):
  mask = frame.numpy().mean(axis=-1) > 0.5
  ys, xs = np.nonzero(mask)
  return np.array([ys.mean(), xs.mean()]), mask.sum()


def test_moving_square_stays_consistent_under_augmentation():
  """The square in y must sit halfway between x0 and x1, with the same size, for every seed."""
  example = _moving_square_triplet()
  displacements = set()
  for i in range(64):
    out = pipeline.augment(example, pipeline.element_seed(3, 0, i), CROP)
    (c0, n0), (cy, ny), (c1, n1) = (_centroid(out[k]) for k in ("x0", "y", "x1"))
    if min(n0, ny, n1) < 64:  # the crop cut the square: its centroid moves, skip this one
      continue
    np.testing.assert_allclose(cy, (c0 + c1) / 2, atol=1e-6)
    step = c1 - c0
    assert np.sort(np.abs(step)).tolist() == [0.0, 10.0]  # 2 x 5 px along one axis
    displacements.add(tuple(step))
  # Motion directions seen: right (identity, vertical flip), left (horizontal flip), up (rot90),
  # each possibly reversed by the temporal swap.
  assert len(displacements) >= 3


def test_element_seeds_differ_by_position_host_and_seed():
  seeds = {tuple(pipeline.element_seed(s, p, i).numpy()) for s in range(2) for p in range(2)
           for i in range(3)}
  assert len(seeds) == 12


def test_augmentation_refuses_non_square_frames_for_rot90():
  frames = tf.zeros([3, 32, 40, 3], tf.uint8)
  with pytest.raises(ValueError, match="square"):
    pipeline.random_orientation(frames, SEEDS[0])


def test_random_downscale_shrinks_motion_with_content():
  """Scaled by s, the moving square's 10 px step becomes 10 s px; y stays halfway; values stay in
  [0, 1]; the shorter side never drops below the crop."""
  big = 80
  frames = []
  for t in range(3):
    frame = np.zeros((big, big, 3), np.uint8)
    frame[30:46, 10 + 10 * t:26 + 10 * t] = 255
    frames.append(frame)
  example = dict(zip(pipeline.FRAMES, frames))
  steps = []
  for i in range(24):
    seed = pipeline.element_seed(1, 0, i)
    scaled = pipeline.random_downscale(pipeline.stack_frames(example), seed, 0.5, CROP).numpy()
    size = scaled.shape[1]
    assert scaled.shape[1:] == (size, size, 3) and 40 <= size <= big
    assert scaled.min() >= 0.0 and scaled.max() <= 255.0
    x = [np.average(np.arange(size), weights=f.mean(axis=(0, 2))) for f in scaled]
    np.testing.assert_allclose(x[1], (x[0] + x[2]) / 2, atol=0.05)  # area filter: sub-px error
    np.testing.assert_allclose(x[2] - x[0], 20 * size / big, rtol=0.03)
    steps.append(size)
    out = _numpy(pipeline.augment(example, seed, CROP, min_scale=0.5))
    assert out["y"].shape == (CROP, CROP, 3) and out["y"].dtype == np.float32
    assert 0.0 <= out["y"].min() and out["y"].max() <= 1.0
  assert len(set(steps)) > 5  # the factor really varies
  # The floor: never below the crop (here 32 of 40 px even though 0.1 is asked for).
  small = pipeline.random_downscale(pipeline.stack_frames(_coordinate_triplet()), SEEDS[0], 0.1,
                                    CROP)
  assert small.shape[1] >= CROP


def test_augment_without_scaling_is_unchanged_by_the_scale_option():
  example = _coordinate_triplet()
  for seed in SEEDS[:4]:
    a = _numpy(pipeline.augment(example, seed, CROP))
    b = _numpy(pipeline.augment(example, seed, CROP, min_scale=1.0))
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("min_scale", [0.0, -0.5, 1.5])
def test_train_dataset_rejects_bad_min_scale(min_scale):
  with pytest.raises(ValueError, match="min_scale"):
    pipeline.train_dataset("unused", min_scale=min_scale)


def test_alternate_takes_batches_of_two_shapes_in_turn_and_resumes_by_skip():
  big = tf.data.Dataset.range(100).map(lambda i: tf.fill([2, 4, 4], i)).repeat()
  small = tf.data.Dataset.range(100).map(lambda i: tf.fill([8, 2, 2], -i)).repeat()
  mixed = pipeline.alternate(big, small)
  shapes_and_values = [(tuple(x.shape), int(x.numpy().flat[0])) for x in mixed.take(6)]
  assert shapes_and_values == [((2, 4, 4), 0), ((8, 2, 2), 0), ((2, 4, 4), 1), ((8, 2, 2), -1),
                               ((2, 4, 4), 2), ((8, 2, 2), -2)]
  resumed = [(tuple(x.shape), int(x.numpy().flat[0])) for x in mixed.skip(3).take(3)]
  assert resumed == shapes_and_values[3:]


def _textured_frames(size=64, seed=0):
  """(3, size, size, 3) float32 noise in [0, 1], a different image per frame."""
  return tf.constant(np.random.default_rng(seed).random((3, size, size, 3)), tf.float32)


@pytest.mark.parametrize("shift", [(0, 11), (-7, 4), (12, -12)])
def test_pasted_object_moves_rigidly_by_the_shift(shift):
  frames = _textured_frames()
  center, radii = (32.0, 30.0), (9.0, 14.0)
  out = pipeline.paste_object(frames, center, radii, shift).numpy()
  x0, y, x1 = out
  rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
  # Well inside the ellipse (past its edge ramp) in the middle frame.
  core = ((rows - center[0]) / radii[0]) ** 2 + ((cols - center[1]) / radii[1]) ** 2 < 0.8 ** 2
  dy, dx = shift
  rr, cc = rows[core], cols[core]
  np.testing.assert_allclose(y[rr, cc], frames.numpy()[1][::-1, ::-1][rr, cc], atol=1e-6)
  np.testing.assert_allclose(x0[rr - dy, cc - dx], y[rr, cc], atol=1e-6)
  np.testing.assert_allclose(x1[rr + dy, cc + dx], y[rr, cc], atol=1e-6)
  # Far from the object at every time, each frame is untouched.
  far = np.ones((64, 64), bool)
  for t in (-1, 0, 1):
    far &= (((rows - center[0] - t * dy) / (radii[0] + 2)) ** 2
            + ((cols - center[1] - t * dx) / (radii[1] + 2)) ** 2) > 1
  for index in range(3):
    np.testing.assert_array_equal(out[index][far], frames.numpy()[index][far])


def test_random_objects_stay_inside_the_crop_and_reach_large_motion():
  """Every drawn ellipse (with its 1-px edge) lies inside the crop at all three times, moves at
  most min(24, S/5) px per axis from the middle frame, and shifts over 16 px are drawn."""
  for size in (128, 64, 32):
    shifts = []
    for i in range(60):
      center, radii, shift = (t.numpy() for t in pipeline.random_object(
          pipeline.element_seed(3, 0, i), size))
      assert np.all(radii >= size / 10) and np.all(radii <= size / 4)
      assert np.all(np.abs(shift) <= min(24, size // 5))
      for t in (-1, 1):
        assert np.all(center + t * shift - radii - 0.5 >= 0), (center, radii, shift)
        assert np.all(center + t * shift + radii + 0.5 <= size - 1), (center, radii, shift)
      shifts.append(np.linalg.norm(shift))
    assert min(shifts) >= 1.0
    if size == 128:
      assert sum(s > 16 for s in shifts) >= 10, shifts
  # And the pasted pixels are those of that object: a flat frame changes only inside it.
  frames = tf.zeros((3, 64, 64, 3)) + 0.5
  frames = tf.concat([frames[:1], tf.ones((1, 64, 64, 3)), frames[2:]], axis=0)
  center, radii, shift = (t.numpy() for t in pipeline.random_object(tf.constant([1, 2]), 64))
  out = pipeline.random_moving_object(frames, tf.constant([1, 2])).numpy()
  rows, cols = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
  inside = (((rows - center[0] + shift[0]) / radii[0]) ** 2
            + ((cols - center[1] + shift[1]) / radii[1]) ** 2) < 1
  changed = out[0, ..., 0] > 0.5
  assert inside.sum() > 0 and np.all(changed[inside]) and np.all(inside[changed & (out[0, ..., 0] > 0.99)])


def test_synthetic_objects_probability_zero_is_plain_and_one_always_pastes():
  example = _coordinate_triplet()
  for seed in SEEDS[:4]:
    plain = _numpy(pipeline.augment(example, seed, CROP))
    zero = _numpy(pipeline.augment(example, seed, CROP, synthetic_objects=0.0))
    always = _numpy(pipeline.augment(example, seed, CROP, synthetic_objects=1.0))
    for key in plain:
      np.testing.assert_array_equal(plain[key], zero[key])
    assert any(not np.array_equal(plain[k], always[k]) for k in plain)
  with pytest.raises(ValueError, match="synthetic_objects"):
    pipeline.train_dataset("unused", synthetic_objects=1.5)


def test_object_flows_are_exact_through_orientation_and_temporal_swap():
  """Where the flows are valid, x0(p + flow0(p)) = y(p) = x1(p + flow1(p)) exactly, whichever
  orientation and swap the seed drew; without an object (or off the object) nothing is valid."""
  rng = np.random.default_rng(1)
  example = {k: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in pipeline.FRAMES}
  swaps = set()
  for i, seed in enumerate(SEEDS):
    out = _numpy(pipeline.augment(example, seed, CROP, synthetic_objects=1.0,
                                  with_object_flows=True))
    swaps.add(bool(pipeline._swap_draw(tf.random.experimental.stateless_split(seed, 3)[2])))
    for key in ("0", "1"):
      valid = out["valid" + key] > 0
      assert valid.sum() > 10, i
      rows, cols = np.nonzero(valid)
      flow = out["flow" + key][rows, cols]
      np.testing.assert_array_equal(flow, np.round(flow))
      source = out["x" + key][rows + flow[:, 1].astype(int), cols + flow[:, 0].astype(int)]
      np.testing.assert_allclose(source, out["y"][rows, cols], atol=1e-6)
    np.testing.assert_array_equal(out["flow0"], -out["flow1"])
  assert swaps == {False, True}
  plain = _numpy(pipeline.augment(example, SEEDS[0], CROP, synthetic_objects=1e-9,
                                  with_object_flows=True))
  assert not plain["valid0"].any() and not plain["valid1"].any()
  with pytest.raises(ValueError, match="synthetic_objects"):
    pipeline.augment(example, SEEDS[0], CROP, with_object_flows=True)


def _street_triplet(size=96, shift=6):
  """A crop of the shipped street photo panning `shift` px per frame to the right (DIS needs
  real texture): x0, y, x1 uint8."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import cv2  # pylint: disable=import-outside-toplevel
  street = pathlib.Path(__file__).resolve().parents[1] / "samples" / "street_0.png"
  image = cv2.cvtColor(cv2.imread(str(street)), cv2.COLOR_BGR2RGB)
  frames = [image[100:100 + size, 200 - t * shift:200 - t * shift + size] for t in (-1, 0, 1)]
  return dict(zip(pipeline.FRAMES, frames))


def test_prealign_leaves_that_share_of_the_motion_and_the_draws_unchanged():
  example = _street_triplet()
  seed = pipeline.element_seed(1, 0, 0)
  plain = _numpy(pipeline.augment(example, seed, 64))
  errors = {}
  for strength in (0.5, 1.0):
    aligned = _numpy(pipeline.augment(example, seed, 64, prealign=strength))
    # The same crop, orientation and swap: y is untouched.
    np.testing.assert_allclose(aligned["y"], plain["y"], atol=1e-6)
    errors[strength] = [np.abs(aligned[k] - aligned["y"]).mean() for k in ("x0", "x1")]
    assert aligned["x0"].dtype == np.float32 and 0 <= aligned["x0"].min() <= aligned["x0"].max() <= 1
  plain_errors = [np.abs(plain[k] - plain["y"]).mean() for k in ("x0", "x1")]
  # Fully aligned frames are close to the middle frame; half-aligned ones in between.
  for e_plain, e_half, e_full in zip(plain_errors, errors[0.5], errors[1.0]):
    assert e_full < 0.3 * e_plain and e_full < e_half < e_plain, (e_plain, e_half, e_full)
  # In tf.data as eagerly.
  in_dataset = _numpy(_in_dataset(lambda e, s: pipeline.augment(e, s, 64, prealign=0.5),
                                  example, seed))
  np.testing.assert_allclose(in_dataset["x0"], _numpy(pipeline.augment(
      example, seed, 64, prealign=0.5))["x0"], atol=1e-6)


def test_unaligned_sources_keep_the_captured_frames_behind_the_aligned_ones():
  example = _street_triplet()
  seed = pipeline.element_seed(1, 0, 0)
  for permute in (False, True):
    options = dict(channel_permutation=permute)
    both = _numpy(pipeline.augment(example, seed, 64, prealign=0.5, keep_captured=True,
                                   **options))
    aligned = _numpy(pipeline.augment(example, seed, 64, prealign=0.5, **options))
    captured = _numpy(pipeline.augment(example, seed, 64, **options))
    assert both["x0"].shape == (64, 64, 6) and both["y"].shape == (64, 64, 3)
    np.testing.assert_allclose(both["y"], captured["y"], atol=1e-6)
    for key in ("x0", "x1"):  # the same crop, orientation, swap and channel order in both
      np.testing.assert_allclose(both[key][..., :3], aligned[key], atol=1e-6)
      np.testing.assert_allclose(both[key][..., 3:], captured[key], atol=1e-6)

