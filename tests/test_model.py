"""The network, its padding policies and checkpoints (small widths, except the parameter count)."""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepconv_jax.network import checkpoint
from sepconv_jax.network import padding
from pallas_kernels import conv_onednn
from sepconv_jax.network.model import (ConvOptions, SepConvConfig, SepConvNet, count_parameters,
                                       local_separable_conv, upsample2x_align_corners)

TINY = SepConvConfig.tiny()  # K = 5


@nnx.jit
def _forward(model, frame0, frame1):
  # Jitted once per (config, shape): eager execution would compile every op on its own.
  return model(frame0, frame1, return_kernels=True)


def _frames(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.random(shape, np.float32)), jnp.asarray(rng.random(shape, np.float32)))


@pytest.fixture(scope="module")
def tiny_model():
  return SepConvNet(TINY, rngs=nnx.Rngs(0))


def test_full_width_parameter_count():
  # The published network: 21.68 M parameters in 47 convolutions (94 tensors).
  abstract = checkpoint.abstract_model(SepConvConfig())
  params = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert len(params) == 94
  assert count_parameters() == 21_675_452
  assert round(count_parameters() / 1e6, 2) == 21.68


def test_scaled_config():
  assert SepConvConfig.scaled(1.0) == SepConvConfig()
  assert SepConvConfig.scaled(0.25).channels == (8, 16, 32, 64, 128)
  with pytest.raises(ValueError, match="kernel_size"):
    SepConvConfig(kernel_size=4)
  assert SepConvConfig.from_dict(TINY.to_dict()) == TINY


def test_shapes_on_non_square_batch(tiny_model):
  frame0, frame1 = _frames((2, 64, 96, 3))
  out, kernels = _forward(tiny_model, frame0, frame1)
  assert out.shape == (2, 64, 96, 3) and out.dtype == jnp.float32
  for kernel_map in kernels:
    assert kernel_map.shape == (2, 64, 96, 5)


@pytest.mark.parametrize("impl", [
    pytest.param("onednn", marks=pytest.mark.skipif(not conv_onednn.onednn_available(),
                                                    reason="oneDNN unavailable")), "xla"])
def test_forward_only_bfloat16_changes_no_output_bit(tiny_model, impl):
  # bfloat16 results between convolutions are exactly the operands the next one would round to.
  frame0, frame1 = _frames((1, 64, 96, 3), seed=3)
  graphdef, state = nnx.split(tiny_model)
  run = lambda forward_only: jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(
      a, b, conv=ConvOptions("bfloat16", impl, forward_only)))(state, frame0, frame1)
  narrow, wide = run(True), run(False)
  assert narrow.dtype == jnp.float32
  np.testing.assert_array_equal(narrow, wide)
  if impl == "onednn":
    jaxpr = str(jax.make_jaxpr(lambda s, a, b: nnx.merge(graphdef, s)(
        a, b, conv=ConvOptions("bfloat16", impl, True)))(state, frame0, frame1))
    written = len(re.findall(r"bf16\[[0-9,]*\] = ffi_call", jaxpr))
    # With bfloat16 hardware the first two convolutions of each of the 13 stacks write bfloat16
    # themselves; without it (AVX2) every convolution runs in float32 on rounded operands and
    # its result is rounded after (conv_onednn.conv_onednn).
    assert written == (26 if conv_onednn.bfloat16_native() else 0)
  assert ConvOptions("bfloat16", impl, True).result_dtype(feeds_conv=True) == jnp.bfloat16
  assert ConvOptions("float32", impl, True).result_dtype(feeds_conv=True) == jnp.float32
  assert ConvOptions("bfloat16", impl, True).result_dtype(feeds_conv=False) == jnp.float32


def test_rejects_sizes_the_network_cannot_pool(tiny_model):
  frame0, frame1 = _frames((1, 48, 64, 3))
  with pytest.raises(ValueError, match="multiples of 32"):
    tiny_model(frame0, frame1)


def test_upsample_align_corners():
  x = jnp.asarray([[0.0, 3.0]]).reshape(1, 1, 2, 1)
  up = upsample2x_align_corners(x)
  assert up.shape == (1, 2, 4, 1)
  np.testing.assert_allclose(up[0, 0, :, 0], [0.0, 1.0, 2.0, 3.0], atol=1e-6)  # corners kept
  np.testing.assert_allclose(up[0, 1, :, 0], up[0, 0, :, 0])


def test_vertical_kernel_indexes_rows():
  # One-hot kernels one tap below the centre vertically: output row y reads input row y + 1.
  k, height, width = 5, 6, 7
  frame = jnp.arange(height * width * 3, dtype=jnp.float32).reshape(1, height, width, 3)
  vertical = jnp.zeros((1, height, width, k)).at[..., k // 2 + 1].set(1.0)
  horizontal = jnp.zeros((1, height, width, k)).at[..., k // 2].set(1.0)
  out = local_separable_conv(frame, vertical, horizontal)
  np.testing.assert_array_equal(out[:, :-1], frame[:, 1:])
  np.testing.assert_array_equal(out[:, -1], frame[:, -1])  # replicate padding at the border
  np.testing.assert_array_equal(local_separable_conv(frame, horizontal, vertical)[:, :, :-1],
                                frame[:, :, 1:])


@pytest.mark.parametrize("normalise", [False, True])
def test_frame_average_init(normalise):
  model = SepConvNet(SepConvConfig.tiny(frame_average_init=True, kernel_normalisation=normalise),
                     rngs=nnx.Rngs(1))
  frame0, frame1 = _frames((1, 32, 64, 3), seed=1)
  np.testing.assert_allclose(_forward(model, frame0, frame1)[0], (frame0 + frame1) / 2, atol=1e-3)


def test_kernel_normalisation_preserves_constant_frames():
  model = SepConvNet(SepConvConfig.tiny(kernel_normalisation=True), rngs=nnx.Rngs(2))
  frame = jnp.full((1, 32, 32, 3), 0.7)
  out, kernels = _forward(model, frame, frame)
  # A constant frame makes every tap see 0.7; what the kernels sum to cancels out, except where
  # that sum is below 0.01, which SepConv++ leaves undivided.
  weight_sum = (kernels.vertical0.sum(-1) * kernels.horizontal0.sum(-1)
                + kernels.vertical1.sum(-1) * kernels.horizontal1.sum(-1))[..., None]
  expected = jnp.where(jnp.abs(weight_sum) < 0.01, 0.7 * weight_sum, 0.7)
  np.testing.assert_allclose(out, jnp.broadcast_to(expected, out.shape), rtol=1e-4, atol=1e-5)


# --- padding policies --------------------------------------------------------------------------


@pytest.mark.parametrize("policy, size, expected", [
    # (top, bottom, left, right) for a 480x640 Middlebury frame: 25 + 480 + 25 -> 640, 690 -> 768.
    ("paper", (480, 640), (25, 135, 25, 103)),
    ("improved", (480, 640), (0, 32, 0, 0)),
    ("paper", (64, 64), (25, 39, 25, 39)),
    ("improved", (64, 96), (0, 64, 0, 32)),
    ("improved", (128, 256), (0, 0, 0, 0)),
])
def test_padding_plans(policy, size, expected):
  plan = padding.plan_padding(*size, policy=policy)
  assert (plan.top, plan.bottom, plan.left, plan.right) == expected
  assert plan.padded_height % 128 == 0 and plan.padded_width % 128 == 0


def test_padding_rejects_bad_arguments():
  with pytest.raises(ValueError, match="policy"):
    padding.plan_padding(64, 64, policy="reflect")
  with pytest.raises(ValueError, match="multiple"):
    padding.plan_padding(64, 64, multiple=48)


def test_pad_replicates_and_crop_inverts():
  frame, _ = _frames((2, 37, 50, 3))
  plan = padding.plan_padding(37, 50, policy="paper", kernel_size=5, multiple=32)
  padded = padding.pad(frame, plan)
  assert padded.shape == (2, plan.padded_height, plan.padded_width, 3)
  np.testing.assert_array_equal(padded[:, 0, plan.left:plan.left + 50], frame[:, 0])
  np.testing.assert_array_equal(padded[:, -1, -1], frame[:, -1, -1])
  np.testing.assert_array_equal(padding.crop(padded, plan), frame)


@pytest.mark.parametrize("policy", padding.POLICIES)
def test_any_frame_size_runs(tiny_model, policy):
  frame0, frame1 = _frames((1, 37, 50, 3))
  out, kernels = padding.run_padded(
      lambda a, b: _forward(tiny_model, a, b), frame0, frame1, policy=policy,
      kernel_size=TINY.kernel_size, multiple=32)
  assert out.shape == (1, 37, 50, 3)
  assert kernels.vertical1.shape == (1, 37, 50, TINY.kernel_size)


# --- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
  config = SepConvConfig.tiny(kernel_normalisation=True)
  model = SepConvNet(config, rngs=nnx.Rngs(3))
  path = checkpoint.save_model(tmp_path / "ckpt", model, channel_order="BGR", info={"step": 7})
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # written elsewhere, renamed when complete

  restored, metadata = checkpoint.load_model(path)
  assert metadata["channel_order"] == "BGR" and metadata["info"] == {"step": 7}
  assert restored.config == config
  original, loaded = nnx.state(model), nnx.state(restored)
  assert jax.tree.structure(original) == jax.tree.structure(loaded)
  for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(loaded)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  frame0, frame1 = _frames((1, 32, 32, 3))
  np.testing.assert_array_equal(_forward(model, frame0, frame1)[0],
                                _forward(restored, frame0, frame1)[0])


def test_checkpoint_errors(tmp_path, tiny_model):
  path = checkpoint.save_model(tmp_path / "ckpt", tiny_model)
  with pytest.raises(FileExistsError):
    checkpoint.save_model(path, tiny_model)
  checkpoint.save_model(path, tiny_model, channel_order="BGR", overwrite=True)
  assert checkpoint.read_metadata(path)["channel_order"] == "BGR"
  with pytest.raises(ValueError, match="channel_order"):
    checkpoint.save_model(tmp_path / "other", tiny_model, channel_order="GBR")
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
    checkpoint.load_model(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError):
    checkpoint.load_model(tmp_path / "empty")


@pytest.mark.parametrize("storage_dtype", ["float16", "bfloat16"])
def test_checkpoint_narrow_storage_loads_as_float32(tmp_path, tiny_model, storage_dtype):
  path = checkpoint.save_model(tmp_path / "ckpt", tiny_model, storage_dtype=storage_dtype)
  restored, metadata = checkpoint.load_model(path)
  assert metadata["storage_dtype"] == storage_dtype
  for a, b in zip(jax.tree.leaves(nnx.state(tiny_model)), jax.tree.leaves(nnx.state(restored))):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(b, a.astype(storage_dtype).astype(jnp.float32))
  with pytest.raises(ValueError, match="storage_dtype"):
    checkpoint.save_model(tmp_path / "other", tiny_model, storage_dtype="int8")


def test_export_keeps_metadata_and_halves_the_size(tmp_path):
  from sepconv_jax.commands import export  # pylint: disable=import-outside-toplevel
  # Big enough (about 1.4M parameters) that the arrays, not per-file overheads, dominate the size.
  model = SepConvNet(SepConvConfig.scaled(0.25, kernel_size=5), rngs=nnx.Rngs(1))
  source = checkpoint.save_model(tmp_path / "source", model, info={"step": 12})
  assert export.main([str(source), str(tmp_path / "out"), "--info", '{"psnr": 30.5}']) == 0
  restored, metadata = checkpoint.load_model(tmp_path / "out")
  assert metadata["storage_dtype"] == "float16" and metadata["channel_order"] == "RGB"
  assert metadata["info"]["step"] == 12 and metadata["info"]["psnr"] == 30.5
  assert metadata["info"]["exported_from"] == str(source)
  frame0, frame1 = _frames((1, 32, 32, 3))
  np.testing.assert_allclose(_forward(restored, frame0, frame1)[0],
                             _forward(model, frame0, frame1)[0], atol=2e-3)
  # Parameter bytes on disk: float16 is half of float32 (plus fixed-size metadata files).
  def array_bytes(path):
    return sum(f.stat().st_size for f in (path / "model").rglob("*") if f.is_file())
  assert array_bytes(tmp_path / "out") < 0.55 * array_bytes(source)


def test_export_errors_are_one_line(tmp_path, tiny_model, capsys):
  from sepconv_jax.commands import export  # pylint: disable=import-outside-toplevel
  assert export.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
  assert "error: no checkpoint directory" in capsys.readouterr().err
  source = checkpoint.save_model(tmp_path / "source", tiny_model)
  assert export.main([str(source), str(source)]) == 1
  assert "already exists" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    export.main([str(source), str(tmp_path / "out"), "--info", "[1, 2]"])
  assert exit_info.value.code == 2 and "JSON object" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_export_blends_two_checkpoints_parameter_by_parameter(tmp_path, capsys):
  from sepconv_jax.commands import export  # pylint: disable=import-outside-toplevel
  config = SepConvConfig.tiny()
  first, second = (SepConvNet(config, rngs=nnx.Rngs(seed)) for seed in (1, 2))
  a = checkpoint.save_model(tmp_path / "a", first, info={"step": 7})
  b = checkpoint.save_model(tmp_path / "b", second)
  assert export.main([str(a), str(tmp_path / "out"), "--dtype", "float32", "--blend-with", str(b),
                      "--blend-weight", "0.25"]) == 0
  assert "0.75 x" in capsys.readouterr().out
  blended, metadata = checkpoint.load_model(tmp_path / "out")
  assert metadata["info"]["step"] == 7 and metadata["info"]["blend_weight"] == 0.25
  assert metadata["info"]["blended_with"] == str(b)
  for x, y, z in zip(*(jax.tree.leaves(nnx.state(m)) for m in (first, second, blended))):
    np.testing.assert_allclose(z, 0.75 * x + 0.25 * y, rtol=1e-6, atol=1e-7)
  # Another network, or a weight outside [0, 1]: one line, nothing written.
  other = checkpoint.save_model(tmp_path / "c", SepConvNet(SepConvConfig.tiny(kernel_size=3),
                                                           rngs=nnx.Rngs(0)))
  assert export.main([str(a), str(tmp_path / "bad"), "--blend-with", str(other)]) == 1
  assert "cannot blend different networks" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    export.main([str(a), str(tmp_path / "bad"), "--blend-with", str(b), "--blend-weight", "1.5"])
  assert exit_info.value.code == 2 and "[0, 1]" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    export.main([str(a), str(tmp_path / "bad"), "--blend-weight", "0.5"])
  assert exit_info.value.code == 2 and "needs --blend-with" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
