"""The Interpolator: arrays in, arrays out, any size, tiles for large frames, x2/x4/x8."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from sepconv_jax import SepConvConfig, SepConvNet, save_model
from sepconv_jax.inference.interpolator import Interpolator, TileSettings


def perturbed(config: SepConvConfig, seed: int = 0) -> SepConvNet:
  """A tiny network with its kernels' last layer perturbed so that the output depends on image
  content (a plain tiny init outputs nearly zero everywhere)."""
  net = SepConvNet(config, rngs=nnx.Rngs(seed))
  for index, subnet in enumerate([*net.vertical_subnets, *net.horizontal_subnets]):
    kernel = subnet.output_conv.kernel
    kernel[...] = jax.random.normal(jax.random.PRNGKey(index), kernel[...].shape) * 0.05
  return net


@pytest.fixture(scope="module")
def model():
  """A tiny network that starts at frame averaging, perturbed (`perturbed`)."""
  return perturbed(SepConvConfig.tiny(frame_average_init=True))


def _pattern(height, width, shift=0):
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  xx = xx + shift
  return np.stack([np.sin(xx / 9), np.cos(yy / 7), np.sin((xx + yy) / 13)], -1) * 0.5 + 0.5


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (1, 130)])
def test_odd_sizes_uint8_and_float(model, shape):
  interpolator = Interpolator(model)
  first, second = _pattern(*shape), _pattern(*shape, shift=2)
  out = interpolator(first, second)
  assert out.shape == (*shape, 3) and out.dtype == np.float32
  # The network starts near frame averaging; content changes it, but not wildly.
  assert 0 < np.abs(np.asarray(out) - (first + second) / 2).mean() < 0.1

  as_uint8 = lambda f: np.round(f * 255).astype(np.uint8)
  out_uint8 = interpolator(as_uint8(first), as_uint8(second))
  assert out_uint8.shape == (*shape, 3) and out_uint8.dtype == np.uint8
  expected = np.clip(np.round(np.asarray(interpolator(as_uint8(first) / 255.0,
                                                      as_uint8(second) / 255.0)) * 255), 0, 255)
  assert np.abs(out_uint8.astype(int) - expected).max() <= 1


def test_batch_matches_single_frames(model):
  interpolator = Interpolator(model)
  firsts = np.stack([_pattern(40, 44), _pattern(40, 44, shift=5)])
  seconds = np.stack([_pattern(40, 44, shift=2), _pattern(40, 44, shift=9)])
  batched = np.asarray(interpolator(firsts, seconds))
  for index in range(2):
    single = np.asarray(interpolator(firsts[index], seconds[index]))
    np.testing.assert_allclose(batched[index], single, atol=1e-5)


def test_bgr_checkpoints_see_bgr(model):
  first, second = _pattern(32, 48), _pattern(32, 48, shift=3)
  rgb_out = np.asarray(Interpolator(model, channel_order="RGB")(first[..., ::-1],
                                                                second[..., ::-1]))
  bgr_out = np.asarray(Interpolator(model, channel_order="BGR")(first, second))
  np.testing.assert_allclose(bgr_out, rgb_out[..., ::-1], atol=1e-6)


def test_tiled_matches_untiled_in_the_interior(model):
  """Tiles see less context than the whole frame, so they differ slightly; the blend must not
  show seams: interior within 0.01 (2.5 grey levels), mean within 1e-3."""
  first, second = _pattern(200, 300), _pattern(200, 300, shift=3)
  untiled = np.asarray(Interpolator(model, max_untiled_pixels=None)(first, second))
  tiled = np.asarray(Interpolator(model, max_untiled_pixels=0,
                                  tiles=TileSettings(size=160, overlap=64))(first, second))
  difference = np.abs(untiled - tiled)
  assert difference[32:-32, 32:-32].max() < 0.01
  assert difference.mean() < 1e-3


@pytest.mark.parametrize("max_untiled_pixels", [None, 0])
def test_ensemble_averages_both_time_orders(model, max_untiled_pixels):
  tiles = TileSettings(size=64, overlap=16)
  plain = Interpolator(model, max_untiled_pixels=max_untiled_pixels, tiles=tiles)
  ensemble = Interpolator(model, max_untiled_pixels=max_untiled_pixels, tiles=tiles,
                          ensemble=True)
  first, second = _pattern(48, 100), _pattern(48, 100, shift=4)
  forward, backward = np.asarray(plain(first, second)), np.asarray(plain(second, first))
  # The perturbed tiny network is not symmetric in time, so the ensemble is a real average.
  assert np.abs(forward - backward).max() > 1e-3
  both = np.asarray(ensemble(first, second))
  np.testing.assert_allclose(both, (forward + backward) / 2, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ensemble(second, first)), both, atol=1e-5)


def test_tiling_starts_automatically_above_the_threshold(model, monkeypatch):
  interpolator = Interpolator(model, max_untiled_pixels=64 * 64, tiles=TileSettings(64, 16))
  calls = []
  original = interpolator._interpolate_tiled
  monkeypatch.setattr(interpolator, "_interpolate_tiled",
                      lambda *a: calls.append(1) or original(*a))
  interpolator(_pattern(64, 64), _pattern(64, 64))
  assert not calls
  assert interpolator(_pattern(64, 96), _pattern(64, 96)).shape == (64, 96, 3)
  assert calls


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_multiply_returns_frames_in_time_order(model, factor):
  interpolator = Interpolator(model)
  first, second = _pattern(32, 32), _pattern(32, 32, shift=4)
  frames = interpolator.multiply(first, second, factor)
  assert len(frames) == factor - 1
  middle = np.asarray(interpolator(first, second))
  np.testing.assert_allclose(np.asarray(frames[factor // 2 - 1]), middle, atol=1e-6)
  if factor >= 4:
    np.testing.assert_allclose(np.asarray(frames[factor // 4 - 1]),
                               np.asarray(interpolator(first, middle)), atol=1e-6)


def test_from_checkpoint_reads_channel_order(model, tmp_path):
  save_model(tmp_path / "ckpt", model, channel_order="BGR")
  interpolator = Interpolator.from_checkpoint(tmp_path / "ckpt", padding="paper")
  assert interpolator.channel_order == "BGR" and interpolator.padding == "paper"
  first, second = _pattern(32, 40), _pattern(32, 40, shift=1)
  np.testing.assert_allclose(
      np.asarray(interpolator(first, second)),
      np.asarray(Interpolator(model, channel_order="BGR", padding="paper")(first, second)),
      atol=1e-6)


@pytest.mark.parametrize("first, second, message", [
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), "differ in shape"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32), "differ in dtype"),
    (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8), r"\(H, W, 3\)"),
    (np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.int32), "uint8 or float"),
])
def test_bad_frames_raise_value_error(model, first, second, message):
  with pytest.raises(ValueError, match=message):
    Interpolator(model)(first, second)


def test_bad_settings_raise_value_error(model):
  with pytest.raises(ValueError, match="padding"):
    Interpolator(model, padding="reflect")
  with pytest.raises(ValueError, match="factor"):
    Interpolator(model).multiply(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 3)
  with pytest.raises(ValueError, match="overlap"):
    TileSettings(size=64, overlap=32)


@pytest.mark.parametrize("conv_impl", [None, "xla"])
def test_precisions_agree_and_are_reported(model, conv_impl):
  first, second = _pattern(64, 96), _pattern(64, 96, shift=3)
  outputs = {}
  for precision in ("float32", "bfloat16"):
    interpolator = Interpolator(model, precision=precision, conv_impl=conv_impl)
    assert interpolator.precision == precision
    assert interpolator.describe_compute().endswith(precision)
    outputs[precision] = np.asarray(interpolator(first, second))
  # bfloat16 operands change the output slightly, not wholesale.
  difference = np.abs(outputs["float32"] - outputs["bfloat16"])
  assert 0 < difference.max() < 0.02, difference.max()
  assert Interpolator(model).precision in ("float32", "bfloat16")
  with pytest.raises(ValueError, match="precision"):
    Interpolator(model, precision="float16")


def test_float_frames_are_checked_and_keep_their_numpy_dtype(model):
  interpolator = Interpolator(model)
  first, second = _pattern(32, 32), _pattern(32, 32, shift=1)
  out = interpolator(first.astype(np.float64), second.astype(np.float64))
  assert isinstance(out, np.ndarray) and out.dtype == np.float64
  assert interpolator(first, second).dtype == np.float32
  assert isinstance(interpolator(jax.numpy.asarray(first), jax.numpy.asarray(second)), jax.Array)
  with pytest.raises(ValueError, match=r"must be in \[0, 1\].*uint8"):
    interpolator(first * 255.0, second * 255.0)  # 0..255 floats
  broken = second.copy()
  broken[3, 4, 1] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    interpolator(first, broken)
  # A model's slight overshoot, fed back in by multiply(), stays accepted.
  assert interpolator(np.clip(first * 1.05, 0, 1.05), second).shape == first.shape


def _apply_kernels(frame, vertical, horizontal, y, x):
  """sum_ij V[y, x, i] H[y, x, j] frame[y + i - K//2, x + j - K//2] and sum_ij V H, by hand."""
  half = vertical.shape[-1] // 2
  window = frame[y - half:y + half + 1, x - half:x + half + 1]
  weights = np.outer(vertical[y, x], horizontal[y, x])
  return np.einsum("ij,ijc->c", weights, window), weights.sum()


@pytest.mark.parametrize("shape", [(37, 53), (64, 64)])
def test_kernel_maps_are_on_the_frames_own_grid(model, shape):
  """The kernel maps, applied by hand to the unpadded frames, give the interpolated frame at every
  pixel whose window lies inside them: the maps are cropped back exactly like the frame."""
  interpolator = Interpolator(model, precision="float32")
  first, second = _pattern(*shape), _pattern(*shape, shift=3)
  out = np.asarray(interpolator(first, second))
  maps = interpolator.kernel_maps(first, second)
  size = model.config.kernel_size
  assert all(m.shape == (*shape, size) and m.dtype == np.float32 for m in maps)
  half = size // 2
  for y, x in [(half, half), (shape[0] // 2, shape[1] // 3), (shape[0] - 1 - half, shape[1] - 1 - half)]:
    total0, weight0 = _apply_kernels(first, maps.vertical0, maps.horizontal0, y, x)
    total1, weight1 = _apply_kernels(second, maps.vertical1, maps.horizontal1, y, x)
    expected = total0 + total1
    if model.config.kernel_normalisation:
      expected = expected / (weight0 + weight1)
    np.testing.assert_allclose(out[y, x], expected, atol=1e-5)
  batched = interpolator.kernel_maps(np.stack([first, second]), np.stack([second, first]))
  assert batched.vertical0.shape == (2, *shape, size)
  np.testing.assert_allclose(batched.horizontal1[0], maps.horizontal1, atol=1e-6)
  with pytest.raises(ValueError, match="differ in shape"):
    interpolator.kernel_maps(first, second[:-1])
