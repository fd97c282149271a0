"""Training: real steps of the tiny network on a tiny cache made here, checkpoints, resume,
kill-safety, fine-tuning and data parallelism on simulated CPU devices."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepconv_jax import load_model
from sepconv_jax.network.model import SepConvConfig
from sepconv_jax.training import configs, losses, loop, metrics, steps as steps_lib
from tests import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIFT = synthetic.TRAINING_SHIFT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
  return synthetic.prepare_training_cache(tmp_path_factory.mktemp("train_cache"))


def tiny(data_dir, **overrides) -> configs.TrainConfig:
  return configs.get_config("tiny").with_overrides(data_dir=str(data_dir), **overrides)


def _params(path) -> list[np.ndarray]:
  model, _ = load_model(path)
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def test_configs():
  default = configs.get_config("default")
  assert (default.batch_size, default.crop_size, default.loss) == (16, 128, "l1")
  assert default.model == SepConvConfig()
  assert configs.get_config("frame_average").model.frame_average_init
  assert configs.TrainConfig.from_dict(json.loads(default.to_json())) == default
  assert default.with_overrides(loss="ssim", steps=None).loss == "ssim"
  with pytest.raises(ValueError, match="unknown config"):
    configs.get_config("huge")
  with pytest.raises(ValueError, match="unknown loss"):
    default.with_overrides(loss="l3")
  with pytest.raises(ValueError, match="multiple of 32"):
    default.with_overrides(crop_size=100)
  with pytest.raises(ValueError, match="min_scale"):
    default.with_overrides(min_scale=0.0)
  cpu = configs.get_config("cpu")  # the shipped model's recipe
  assert (cpu.batch_size, cpu.crop_size, cpu.min_scale) == (16, 64, 0.5)
  assert (cpu.learning_rate, cpu.warmup_steps) == (1e-3, 200)
  with pytest.raises(ValueError, match="warmup_steps"):
    default.with_overrides(warmup_steps=-1)
  assert cpu.model == SepConvConfig(frame_average_init=True, kernel_normalisation=True)
  assert cpu.data_dir == default.data_dir  # the default (motion-selected) cache
  assert default.precision is None  # the backend's default, resolved when training starts
  with pytest.raises(ValueError, match="precision"):
    default.with_overrides(precision="float16")


def test_metrics_match_numpy_and_skimage():
  skimage_metrics = pytest.importorskip("skimage.metrics")
  rng = np.random.default_rng(0)
  y = rng.random((2, 24, 24, 3)).astype(np.float32)
  p = np.clip(y + rng.normal(0, 0.05, y.shape), -0.1, 1.1).astype(np.float32)
  ours = np.asarray(metrics.psnr(jnp.asarray(p), jnp.asarray(y)))
  for i in range(2):
    q = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    expected = skimage_metrics.peak_signal_noise_ratio(q(y[i]), q(p[i]), data_range=255)
    assert ours[i] == pytest.approx(expected, abs=1e-3)
    assert metrics.psnr_numpy(p[i], y[i]) == pytest.approx(expected, abs=1e-6)
  assert float(metrics.psnr(jnp.asarray(y), jnp.asarray(y))[0]) == metrics.MAX_PSNR
  ssim = np.asarray(metrics.ssim_gaussian(jnp.asarray(p), jnp.asarray(y)))
  assert ssim.shape == (2,) and np.all((ssim > 0) & (ssim < 1))


def _fixed_batches(count=2, batch=4, size=32, seed=0):
  """Panning-texture triplets (x0, y, x1 shifted by SHIFT px each) as in-memory batches."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    texture = cv2.GaussianBlur(rng.random((batch, size, size + 2 * SHIFT, 3)).astype(np.float32)
                               .reshape(batch * size, size + 2 * SHIFT, 3), (5, 5), 0)
    texture = texture.reshape(batch, size, size + 2 * SHIFT, 3)
    out.append({"x0": texture[:, :, 2 * SHIFT:], "y": texture[:, :, SHIFT:size + SHIFT],
                "x1": texture[:, :, :size]})
  return out


def test_loss_decreases_over_50_steps():
  config = configs.get_config("tiny").with_overrides(
      model=SepConvConfig.tiny(), learning_rate=3e-3)
  mesh = steps_lib.make_mesh(jax.devices()[:1])
  graphdef, state = steps_lib.create_train_state(config)
  step = steps_lib.make_train_step(graphdef, losses.get_loss("l1"),
                                  steps_lib.make_optimizer(config), mesh)
  state = steps_lib.replicate(state, mesh)
  batches = [steps_lib.shard_batch(b, mesh) for b in _fixed_batches()]
  history = []
  for i in range(50):
    state, m = step(state, batches[i % len(batches)])
    history.append(float(m["loss"]))
  assert all(np.isfinite(history))
  assert np.mean(history[-4:]) < 0.7 * np.mean(history[:2]), history
  assert int(state.step) == 50


def test_moving_average_follows_the_parameters_step_by_step():
  """With `ema_decay` the step trains exactly as without, and the average after each step is
  d * average + (1 - d) * new parameters, starting from the initial parameters."""
  config = configs.get_config("tiny").with_overrides(model=SepConvConfig.tiny(),
                                                     learning_rate=3e-3)
  mesh = steps_lib.make_mesh(jax.devices()[:1])
  batches = [steps_lib.shard_batch(b, mesh) for b in _fixed_batches(count=2)]
  runs = {}
  for decay in (None, 0.75):
    graphdef, state = steps_lib.create_train_state(config.with_overrides(ema_decay=decay))
    step = steps_lib.make_train_step(graphdef, losses.get_loss("l1"),
                                     steps_lib.make_optimizer(config), mesh, ema_decay=decay)
    state = steps_lib.replicate(state, mesh)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
    trajectory = [(leaves(state.params), leaves(state.model_params))]
    for batch in batches:
      state, _ = step(state, batch)
      trajectory.append((leaves(state.params), leaves(state.model_params)))
    runs[decay] = trajectory
  for (plain, plain_model), (raw, average) in zip(runs[None], runs[0.75], strict=True):
    for a, b in zip(plain, raw, strict=True):
      np.testing.assert_array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(plain, plain_model))
  expected = runs[0.75][0][0]
  for (raw, average) in runs[0.75][1:]:
    expected = [0.75 * e + 0.25 * r for e, r in zip(expected, raw)]
    for e, a in zip(expected, average, strict=True):
      np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)
  assert not np.array_equal(runs[0.75][-1][0][0], runs[0.75][-1][1][0])


@pytest.mark.parametrize("loss", ["l1", "l2", "ssim"])
def test_train_runs_with_each_loss(data_dir, tmp_path, loss):
  result = loop.train(tiny(data_dir, loss=loss, steps=3, steps_per_epoch=3), tmp_path / "w",
                          progress=False)
  assert result.step == 3 and len(result.history) == 3
  assert all(np.isfinite([l for _, l in result.history]))
  assert set(result.validation) == {3}
  assert 5 < result.validation[3]["psnr"] < 100
  model, metadata = load_model(result.checkpoint())
  assert metadata["channel_order"] == "RGB" and metadata["info"]["loss"] == loss
  assert metadata["info"]["step"] == 3 and model.config == tiny(data_dir).model


def test_vgg_losses_need_weights(data_dir, tmp_path):
  with pytest.raises(ValueError, match="vgg-weights"):
    loop.train(tiny(data_dir, loss="l1+vgg", steps=1), tmp_path / "w", progress=False)


def _random_vgg_npz(path):
  """Random weights with torchvision VGG-19's names and shapes: tests the loss path only."""
  from sepconv_jax.training.vgg import TORCHVISION_CONV_INDICES
  rng = np.random.default_rng(0)
  channels = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512]
  state = {}
  for index, (fan_in, fan_out) in zip(TORCHVISION_CONV_INDICES, zip(channels, channels[1:])):
    state[f"features.{index}.weight"] = (rng.normal(size=(fan_out, fan_in, 3, 3)) *
                                         np.sqrt(2 / (9 * fan_in))).astype(np.float32)
    state[f"features.{index}.bias"] = np.zeros(fan_out, np.float32)
  np.savez(path, **state)
  return path


def test_vgg_loss_trains_with_local_weights(data_dir, tmp_path):
  weights = _random_vgg_npz(tmp_path / "vgg19.npz")
  result = loop.train(tiny(data_dir, loss="l1+vgg", nu=1e-3, vgg_weights=str(weights),
                               steps=2, num_samples=0), tmp_path / "w", progress=False)
  assert result.step == 2 and all(np.isfinite([l for _, l in result.history]))


def _event_tags(directory) -> set[str]:
  import tensorflow as tf
  from tensorflow.core.util import event_pb2
  tags = set()
  for path in pathlib.Path(directory).glob("events.out.tfevents.*"):
    for record in tf.data.TFRecordDataset(str(path)):
      event = event_pb2.Event.FromString(record.numpy())
      tags |= {value.tag for value in event.summary.value}
  return tags


def test_full_run_writes_checkpoints_samples_and_events(data_dir, tmp_path):
  workdir = tmp_path / "w"
  # 2 epochs of 4 steps, saves every 3 steps: 3, 4 (epoch), 6, 8 (epoch, last); keep 2 latest.
  result = loop.train(tiny(data_dir, epochs=2, steps_per_epoch=4, checkpoint_every=3),
                          workdir, progress=False)
  assert result.step == 8
  assert set(result.validation) == {4, 8}
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  best = max(result.validation, key=lambda s: result.validation[s]["psnr"])
  assert result.best_step == best
  assert steps == sorted({6, 8, best})
  for step in steps:
    assert _params(workdir / "checkpoints" / str(step))
  assert list((workdir / "samples" / "00000008").glob("sample_*.png"))
  assert {"train/loss", "train/step_time_s", "validation/psnr", "validation/ssim_gaussian",
          "samples/0"} <= _event_tags(workdir / "tensorboard")
  assert json.loads((workdir / "config.json").read_text())["steps_per_epoch"] == 4
  with pytest.raises(steps_lib.TrainingError, match="--resume"):
    loop.train(tiny(data_dir, epochs=2, steps_per_epoch=4), workdir, progress=False)


def test_full_frame_validation_ranks_checkpoints(data_dir, tmp_path):
  config = tiny(data_dir, epochs=2, steps_per_epoch=2, checkpoint_every=2, num_samples=0,
                full_validation=3, full_validation_gap=2)
  result = loop.train(config, tmp_path / "w", progress=False)
  scores = result.validation[4]
  # The synthetic sequences pan by a few pixels a frame: every pixel is in the smallest bucket.
  assert {"psnr", "full_psnr", "full_psnr_<4px"} <= set(scores)
  assert 10 < scores["full_psnr"] < 60
  # And how far the kernels follow that motion (a tiny network barely moves from averaging's 0).
  followed = {k: v for k, v in scores.items() if k.startswith("full_followed_")}
  assert followed and all(-1 < v < 1 for v in followed.values())
  best = max(result.validation, key=lambda s: result.validation[s]["full_psnr"])
  assert result.best_step == best
  triplets = loop._validation_frames(str(data_dir), 3, gap=2)
  assert len(triplets) == 1 and triplets[0][0].shape == (64, 80, 3)  # one validation sequence
  with pytest.raises(ValueError, match="full_validation_gap"):
    config.with_overrides(full_validation_gap=0)


def test_flow_guided_training_adds_the_centroid_term(data_dir, tmp_path):
  config = tiny(data_dir, steps=3, steps_per_epoch=3, checkpoint_every=3, num_samples=0,
                centroid_weight=0.05, centroid_steps=2)
  result = loop.train(config, tmp_path / "w", progress=False)
  assert result.step == 3 and all(np.isfinite(loss) for _, loss in result.history)
  assert "train/centroid_loss" in _event_tags(tmp_path / "w" / "tensorboard")
  with pytest.raises(ValueError, match="centroid"):
    config.with_overrides(centroid_weight=-1.0)
  # The exact flows of synthetic objects as the targets instead of DIS.
  objects = config.with_overrides(synthetic_objects=1.0, centroid_flows="objects")
  result = loop.train(objects, tmp_path / "objects", progress=False)
  assert result.step == 3 and all(np.isfinite(loss) for _, loss in result.history)
  assert "train/centroid_loss" in _event_tags(tmp_path / "objects" / "tensorboard")
  with pytest.raises(ValueError, match="synthetic_objects"):
    config.with_overrides(centroid_flows="objects")
  with pytest.raises(ValueError, match="centroid_flows"):
    config.with_overrides(centroid_flows="farneback")


def test_motion_weighted_training_gets_the_flows(data_dir, tmp_path):
  config = tiny(data_dir, steps=2, steps_per_epoch=2, checkpoint_every=2, num_samples=0,
                motion_weight=3.0)
  result = loop.train(config, tmp_path / "w", progress=False)
  assert result.step == 2 and all(np.isfinite(loss) for _, loss in result.history)
  # Not the plain l1 run's losses: the same data, weighted by the crops' motion.
  plain = loop.train(config.with_overrides(motion_weight=0.0), tmp_path / "plain", progress=False)
  assert result.history[0][1] != pytest.approx(plain.history[0][1], rel=1e-6)
  for overrides, message in (({"motion_weight": -1.0}, "must not be negative"),
                             ({"loss": "l2"}, "only the l1 loss"),
                             ({"synthetic_objects": 1.0, "centroid_flows": "objects"},
                              "optical flows of every crop")):
    with pytest.raises(ValueError, match=message):
      config.with_overrides(**overrides)


def test_alternate_crops_train_every_second_step_on_the_other_size(tmp_path):
  data_dir = synthetic.prepare_training_cache(tmp_path / "cache", patch_size=64)
  config = tiny(data_dir, crop_size=64, batch_size=2, alternate_crop_size=32,
                alternate_min_scale=0.5, steps=2, steps_per_epoch=2, checkpoint_every=2,
                num_samples=0, log_every=1)
  assert config.alternate_batch_size == 8  # 2 x 64^2 pixels = 8 x 32^2
  batches = loop._train_batches(config, loop._open_data(config)).take(4)
  assert [tuple(b["y"].shape) for b in batches] == [(2, 64, 64, 3), (8, 32, 32, 3)] * 2
  result = loop.train(config, tmp_path / "w", progress=False)  # one step of each kind
  assert result.step == 2 and all(np.isfinite(loss) for _, loss in result.history)
  assert json.loads((tmp_path / "w" / "config.json").read_text())["alternate_crop_size"] == 32
  with pytest.raises(ValueError, match="alternate_crop_size must be"):
    config.with_overrides(alternate_crop_size=48)
  with pytest.raises(ValueError, match="as many pixels"):
    config.with_overrides(alternate_crop_size=96)
  with pytest.raises(ValueError, match="alternate_min_scale"):
    config.with_overrides(alternate_min_scale=0.0)


def test_alternate_min_flow_picks_the_alternate_crops_patches_only(data_dir):
  config = tiny(data_dir, crop_size=32, batch_size=2, alternate_crop_size=32,
                alternate_min_flow=1e6)  # no synthetic patch moves that much
  with pytest.raises(ValueError, match="no training patch .* at least 1e\\+06 px"):
    loop._train_batches(config, loop._open_data(config))
  # The main crops keep every patch: the same batches as without the bound.
  config = config.with_overrides(alternate_min_flow=1e-3)
  plain = dataclasses.replace(config, alternate_min_flow=None)
  first, second = (next(iter(loop._train_batches(c, loop._open_data(c)))) for c in (config, plain))
  np.testing.assert_array_equal(first["y"], second["y"])
  with pytest.raises(ValueError, match="needs alternate_crop_size"):
    dataclasses.replace(config, alternate_crop_size=None)
  with pytest.raises(ValueError, match="at most max_flow"):
    config.with_overrides(max_flow=1e-4)
  with pytest.raises(ValueError, match="alternate_min_flow must be positive"):
    config.with_overrides(alternate_min_flow=0.0)


def test_max_flow_reaches_the_training_pipeline(data_dir):
  config = tiny(data_dir, max_flow=1e-3)  # the synthetic patches all move more
  with pytest.raises(ValueError, match="no training patch"):
    loop._train_batches(config, loop._open_data(config))
  with pytest.raises(ValueError, match="max_flow"):
    config.with_overrides(max_flow=-1.0)


def test_synthetic_objects_reach_both_crop_sizes(data_dir):
  config = tiny(data_dir, alternate_crop_size=32, batch_size=4, crop_size=32)
  data = loop._open_data(config)
  plain = list(loop._train_batches(config, data).take(2).as_numpy_iterator())
  pasted = list(loop._train_batches(config.with_overrides(synthetic_objects=1.0), data)
                .take(2).as_numpy_iterator())
  for a, b in zip(plain, pasted, strict=True):  # a main batch, then an alternate one
    assert a["y"].shape == b["y"].shape and not np.array_equal(a["y"], b["y"])
  with pytest.raises(ValueError, match="synthetic_objects"):
    config.with_overrides(synthetic_objects=2.0)


def test_more_augmentation_reaches_both_crop_sizes(data_dir):
  config = tiny(data_dir, alternate_crop_size=32, batch_size=4, crop_size=32)
  data = loop._open_data(config)
  plain = list(loop._train_batches(config, data).take(2).as_numpy_iterator())
  for option in ("all_orientations", "channel_permutation"):
    more = list(loop._train_batches(config.with_overrides(**{option: True}), data)
                .take(2).as_numpy_iterator())
    for a, b in zip(plain, more, strict=True):  # a main batch, then an alternate one
      assert a["y"].shape == b["y"].shape and not np.array_equal(a["y"], b["y"]), option
  # Pre-alignment changes the input frames only, of both kinds of batch.
  aligned = list(loop._train_batches(config.with_overrides(prealign=1.0), data)
                 .take(2).as_numpy_iterator())
  for a, b in zip(plain, aligned, strict=True):
    np.testing.assert_allclose(a["y"], b["y"], atol=1e-6)
    assert not np.allclose(a["x0"], b["x0"], atol=1e-3)
  with pytest.raises(ValueError, match="prealign"):
    config.with_overrides(prealign=1.5)


def test_resume_is_bit_exact(data_dir, tmp_path):
  # With a warm-up spanning the resume point: the schedule's step count must be restored too.
  config = tiny(data_dir, steps_per_epoch=3, checkpoint_every=2, num_samples=0, warmup_steps=4)
  straight = loop.train(config.with_overrides(steps=5), tmp_path / "a", progress=False)
  first = loop.train(config.with_overrides(steps=3), tmp_path / "b", progress=False)
  assert first.step == 3
  resumed = loop.train(config.with_overrides(steps=5), tmp_path / "b", resume=True,
                           progress=False)
  assert resumed.step == 5 and [s for s, _ in resumed.history] == [4, 5]
  assert resumed.history == straight.history[3:]
  for a, b in zip(_params(straight.checkpoint()), _params(resumed.checkpoint()), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(steps_lib.TrainingError, match="different configuration"):
    loop.train(config.with_overrides(steps=6, crop_size=64), tmp_path / "b",
                   resume=True, progress=False)
  # The schedule may change only where it has not been used yet: a decay is added at step 5 ...
  with pytest.raises(steps_lib.TrainingError, match="differs .* at step 1"):  # step 0's rate: 0
    loop.train(config.with_overrides(steps=7, learning_rate=1e-4), tmp_path / "b",
                   resume=True, progress=False)
  decayed = loop.train(config.with_overrides(steps=7, decay_start=5, decay_end=7),
                           tmp_path / "b", resume=True, progress=False)
  assert decayed.step == 7
  assert json.loads((tmp_path / "b" / "config.json").read_text())["decay_end"] == 7
  # ... and then cannot be stretched, as steps 5 and 6 already ran on it.
  with pytest.raises(steps_lib.TrainingError, match="differs .* at step 6"):
    loop.train(config.with_overrides(steps=9, decay_start=5, decay_end=9), tmp_path / "b",
                   resume=True, progress=False)


def test_moving_average_is_the_saved_model_and_resumes_bit_exact(data_dir, tmp_path):
  config = tiny(data_dir, steps_per_epoch=3, checkpoint_every=2, num_samples=0, ema_decay=0.5)
  straight = loop.train(config.with_overrides(steps=5), tmp_path / "a", progress=False)
  loop.train(config.with_overrides(steps=3), tmp_path / "b", progress=False)
  resumed = loop.train(config.with_overrides(steps=5), tmp_path / "b", resume=True,
                       progress=False)
  assert resumed.history == straight.history[3:]  # the raw parameters came back too
  for a, b in zip(_params(straight.checkpoint()), _params(resumed.checkpoint()), strict=True):
    np.testing.assert_array_equal(a, b)
  # The same run without the average trains identically; its saved model is the raw parameters.
  plain = loop.train(dataclasses.replace(config, steps=5, ema_decay=None), tmp_path / "c",
                     progress=False)
  assert plain.history == straight.history
  assert any(not np.array_equal(a, b) for a, b in
             zip(_params(plain.checkpoint()), _params(straight.checkpoint()), strict=True))
  with pytest.raises(steps_lib.TrainingError, match="different configuration"):
    loop.train(config.with_overrides(steps=6, ema_decay=0.9), tmp_path / "b", resume=True,
               progress=False)
  with pytest.raises(ValueError, match="ema_decay"):
    config.with_overrides(ema_decay=1.0)


def test_precision_is_recorded_and_may_change_on_resume(data_dir, tmp_path):
  config = tiny(data_dir, steps_per_epoch=2, checkpoint_every=2, num_samples=0)
  results = {}
  for precision in ("float32", "bfloat16"):
    results[precision] = loop.train(config.with_overrides(steps=2, precision=precision),
                                        tmp_path / precision, progress=False)
    stored = json.loads((tmp_path / precision / "config.json").read_text())
    assert stored["precision"] == precision
  # Same data, same start: the two precisions train alike but not bit for bit.
  losses_f32, losses_bf16 = (np.array([loss for _, loss in r.history]) for r in results.values())
  np.testing.assert_allclose(losses_bf16, losses_f32, rtol=2e-2)
  # The default is resolved and recorded; a resume may switch precision.
  resumed = loop.train(config.with_overrides(steps=4), tmp_path / "float32", resume=True,
                           progress=False)
  assert resumed.step == 4
  assert json.loads((tmp_path / "float32" / "config.json").read_text())["precision"] in (
      "float32", "bfloat16")


def test_learning_rate_schedule():
  assert steps_lib.learning_rate_schedule(1e-3) == 1e-3
  warm = steps_lib.learning_rate_schedule(1e-3, warmup_steps=4)
  decayed = steps_lib.learning_rate_schedule(1e-3, warmup_steps=4, decay_start=10, decay_end=20,
                                            final_learning_rate=1e-4)
  steps = jnp.array([0, 2, 4, 9, 10, 15, 20, 30])
  np.testing.assert_allclose(warm(steps), [0, 5e-4] + [1e-3] * 6, rtol=1e-6)
  # Cosine: the full rate at the start, half-way between the two rates in the middle.
  np.testing.assert_allclose(decayed(steps), [0, 5e-4, 1e-3, 1e-3, 1e-3, 5.5e-4, 1e-4, 1e-4],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="decay_start and decay_end"):
    configs.TrainConfig(decay_start=5)
  with pytest.raises(ValueError, match="after the warm-up"):
    configs.TrainConfig(warmup_steps=10, decay_start=5, decay_end=20)
  with pytest.raises(ValueError, match="final_learning_rate"):
    configs.TrainConfig(decay_start=5, decay_end=20, final_learning_rate=1.0)


def test_init_from_with_another_loss(data_dir, tmp_path):
  base = loop.train(tiny(data_dir, steps=2, num_samples=0), tmp_path / "l1", progress=False)
  tuned = loop.train(tiny(data_dir, loss="ssim", steps=2, num_samples=0), tmp_path / "ssim",
                         init_from=base.checkpoint(), progress=False)
  assert tuned.step == 2 and load_model(tuned.checkpoint())[1]["info"]["loss"] == "ssim"
  with pytest.raises(steps_lib.TrainingError, match="constant learning rate and a schedule"):
    loop.train(tiny(data_dir, steps=4, num_samples=0, decay_start=2, decay_end=4),
                   tmp_path / "l1", resume=True, progress=False)
  other = tiny(data_dir, steps=1, model=SepConvConfig.tiny(kernel_size=3))
  with pytest.raises(steps_lib.TrainingError, match="different network"):
    loop.train(other, tmp_path / "x", init_from=base.checkpoint(), progress=False)


@pytest.mark.parametrize("field, subnets", [("unaligned_sources", 4), ("captured_input", 2)])
def test_unaligned_sources_start_from_a_network_without_them(data_dir, tmp_path, field, subnets):
  base = loop.train(tiny(data_dir, steps=1, num_samples=0), tmp_path / "base", progress=False)
  dual_model = dataclasses.replace(SepConvConfig.tiny(frame_average_init=True), **{field: True})
  with pytest.raises(ValueError, match="prealign"):
    tiny(data_dir, model=dual_model)
  config = tiny(data_dir, steps=1, num_samples=0, prealign=0.5, model=dual_model,
                full_validation=1, validation_batches=1)
  start = loop._initial_params(config, base.checkpoint())
  assert len(start["vertical_subnets"]) == subnets
  batch = next(loop._train_batches(config, loop._open_data(config)).as_numpy_iterator())
  assert batch["x0"].shape[-1] == 6 and batch["y"].shape[-1] == 3
  validation = next(loop._validation_batches(config, config.data_dir, 2))
  assert validation["x0"].shape[-1] == 6 and validation["y"].shape[-1] == 3
  tuned = loop.train(config, tmp_path / "dual", init_from=base.checkpoint(), progress=False)
  model, metadata = load_model(tuned.checkpoint())
  assert getattr(model.config, field) and metadata["info"]["train_config"]["prealign"] == 0.5


def test_unaligned_lr_scale_multiplies_the_updates_of_what_only_the_captured_frames_use():
  dual_model = dataclasses.replace(SepConvConfig.tiny(frame_average_init=True),
                                   unaligned_sources=True)
  config = configs.get_config("tiny").with_overrides(model=dual_model, prealign=0.5)
  _, state = steps_lib.create_train_state(config)
  grads = jax.tree.map(jnp.ones_like, state.params)
  updates = {}
  for scale in (1.0, 10.0):
    scaled = config.with_overrides(unaligned_lr_scale=scale)
    optimizer = steps_lib.make_optimizer(scaled)
    out, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    updates[scale] = {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(out)}
  ratio = {path: updates[10.0][path] / updates[1.0][path] for path in updates[1.0]}
  first = ratio[("encoder", 0, "convs", 0, "kernel")]
  np.testing.assert_allclose(first[:, :, [3, 4, 5, 9, 10, 11]], 10.0, rtol=1e-5)
  np.testing.assert_allclose(first[:, :, [0, 1, 2, 6, 7, 8]], 1.0, rtol=1e-5)
  for path, value in ratio.items():
    if path[0].endswith("_subnets"):
      np.testing.assert_allclose(value, 10.0 if path[1] >= 2 else 1.0, rtol=1e-5)
    elif path[:2] != ("encoder", 0):
      np.testing.assert_allclose(value, 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="unaligned_lr_scale"):
    configs.get_config("tiny").with_overrides(unaligned_lr_scale=10.0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  real = losses.get_loss
  config = tiny(data_dir, steps=6, checkpoint_every=2, num_samples=0, log_every=1,
                steps_per_epoch=100)
  workdir = tmp_path / "w"
  loop.train(config.with_overrides(steps=2), workdir, progress=False)
  monkeypatch.setattr(losses, "get_loss",
                      lambda name, **kw: lambda batch, p: real(name, **kw)(batch, p) * jnp.nan)
  with pytest.raises(steps_lib.NonFiniteLossError, match=r"step 3.*checkpoints/2"):
    loop.train(config, workdir, resume=True, progress=False)
  manager = loop.checkpoint_manager(workdir / "checkpoints", read_only=True)
  assert manager.latest_step() == 2
  manager.close()
  assert all(np.isfinite(a).all() for a in _params(workdir / "checkpoints" / "2"))


KILL_SCRIPT = """
import sys
from sepconv_jax.training import configs
from sepconv_jax.training import loop, steps as steps_lib
config = configs.get_config("tiny").with_overrides(
    data_dir=sys.argv[1], steps=100000, checkpoint_every=1, keep_checkpoints=2, num_samples=0,
    steps_per_epoch=100000)
loop.train(config, sys.argv[2], resume=True, progress=False)
"""


@pytest.mark.slow
def test_sigkill_never_leaves_an_unrestorable_checkpoint(data_dir, tmp_path):
  workdir = tmp_path / "w"
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
  rng = np.random.default_rng(0)
  for attempt in range(2):
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(data_dir), str(workdir)],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
      # Generous: on 2 loaded cores the imports, compilation and first save take minutes.
      deadline = time.monotonic() + 600
      start = len(list((workdir / "checkpoints").glob("[0-9]*")))
      # Wait until this run has saved at least one checkpoint, then kill at a random moment
      # (saves happen every step, so often during one).
      while time.monotonic() < deadline and process.poll() is None:
        names = [p.name for p in (workdir / "checkpoints").glob("*")] if workdir.exists() else []
        if attempt == 0 and any(n.isdigit() for n in names):
          break
        if attempt > 0 and len(names) > start:
          break
        time.sleep(0.05)
      else:
        pytest.fail(f"attempt {attempt}: no new checkpoint within 600 s (or the run ended)")
      time.sleep(rng.uniform(0.0, 1.5))
      assert process.poll() is None, "the training subprocess ended by itself"
    finally:
      process.send_signal(signal.SIGKILL)
      process.wait()
    manager = loop.checkpoint_manager(workdir / "checkpoints")
    latest = manager.latest_step()
    assert latest is not None
    manager.close()
    assert _params(workdir / "checkpoints" / str(latest))
  # And training continues from what is there.
  result = loop.train(tiny(data_dir, steps=latest + 1, checkpoint_every=1, keep_checkpoints=2,
                               num_samples=0, steps_per_epoch=100000),
                          workdir, resume=True, progress=False)
  assert result.step == latest + 1


MULTI_DEVICE_SCRIPT = """
import os, sys
import jax, numpy as np
from sepconv_jax.training import configs
from sepconv_jax.training import losses
from sepconv_jax.training import loop, steps as steps_lib
from sepconv_jax.network.model import SepConvConfig
assert jax.device_count() == 4, jax.devices()
sys.path.insert(0, "tests")
config = configs.get_config("tiny").with_overrides(model=SepConvConfig.tiny())
batch = np.load(sys.argv[1])
batch = {k: batch[k] for k in ("x0", "x1", "y")}
results = {}
for n in (1, 4):
  mesh = steps_lib.make_mesh(jax.devices()[:n])
  graphdef, state = steps_lib.create_train_state(config)
  step = steps_lib.make_train_step(graphdef, losses.get_loss("l1"), steps_lib.make_optimizer(config),
                                  mesh)
  state, m = step(steps_lib.replicate(state, mesh), steps_lib.shard_batch(batch, mesh))
  assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == n
  results[n] = (float(m["loss"]), [np.asarray(x) for x in jax.tree.leaves(state.params)])
  eval_step = steps_lib.make_eval_step(graphdef, mesh)
  masked = {**batch, "mask": np.ones(4, np.float32)}
  sums = eval_step(state.params, steps_lib.shard_batch(masked, mesh))
  results[n] += (float(sums["psnr"]),)
(l1, p1, e1), (l4, p4, e4) = results[1], results[4]
np.testing.assert_allclose(l4, l1, rtol=1e-5)
np.testing.assert_allclose(e4, e1, rtol=1e-4)
for a, b in zip(p1, p4, strict=True):
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
print("OK", l1, l4)
"""


@pytest.mark.slow
def test_one_step_on_four_devices_matches_one_device(tmp_path):
  batch = _fixed_batches(count=1, batch=4)[0]
  np.savez(tmp_path / "batch.npz", **batch)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  done = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT, str(tmp_path / "batch.npz")],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "OK" in done.stdout


def test_adamax_warm_up_ramps_the_step_size():
  """Without warm-up AdaMax's first step moves every weight by the full learning rate (the sign
  of its gradient); with it, step k moves by k/warmup of it, up to the full rate."""
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.array([1e-9, -2.0, 3.0, -4e3])}
  plain = steps_lib.adamax(1e-3, 0.9, 0.999, 1e-12)
  updates, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(updates["w"], -1e-3 * np.sign(grads["w"]), rtol=1e-3)
  ramped = steps_lib.adamax(1e-3, 0.9, 0.999, 1e-12, warmup_steps=10)
  state = ramped.init(params)
  sizes = []
  for _ in range(12):
    updates, state = ramped.update(grads, state, params)
    sizes.append(float(jnp.abs(updates["w"][2])))
  np.testing.assert_allclose(sizes[:11], [1e-4 * k for k in range(11)], atol=1e-9)
  assert sizes[11] == pytest.approx(1e-3, rel=1e-5)
