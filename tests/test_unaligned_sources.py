"""A network with unaligned sources: it sees, and samples, the captured frames as well as the
pre-aligned ones (`SepConvConfig.unaligned_sources`); and one with captured input, which only
sees them (`SepConvConfig.captured_input`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sepconv_jax.inference import alignment
from sepconv_jax.inference.interpolator import Interpolator, TileSettings
from sepconv_jax.network.model import (ConvOptions, SepConvConfig, SepConvNet, count_parameters,
                                       with_captured_frames, with_unaligned_sources)
from sepconv_jax.network.padding import run_padded
from tests.test_alignment import _textured
from tests.test_interpolator import perturbed as _perturbed


def _frames(count, shape=(2, 64, 64, 3)):
  return [jax.random.uniform(key, shape) for key in jax.random.split(jax.random.key(7), count)]


@pytest.mark.parametrize("normalised", [False, True])
def test_the_extended_network_computes_what_the_original_did(normalised):
  original = _perturbed(SepConvConfig.tiny(frame_average_init=True,
                                           kernel_normalisation=normalised))
  extended = with_unaligned_sources(original)
  assert extended.config.unaligned_sources and extended.config.frame_channels == 6
  assert len(extended.vertical_subnets) == len(extended.horizontal_subnets) == 4
  assert count_parameters(extended.config) > count_parameters(original.config)
  aligned0, aligned1, captured0, captured1 = _frames(4)
  frame0 = jnp.concatenate([aligned0, captured0], axis=-1)
  frame1 = jnp.concatenate([aligned1, captured1], axis=-1)
  np.testing.assert_array_equal(extended(frame0, frame1), original(aligned0, aligned1))
  for mine, theirs in zip(extended.kernel_maps(frame0, frame1),
                          original.kernel_maps(aligned0, aligned1)):
    np.testing.assert_array_equal(mine, theirs)
  with pytest.raises(ValueError, match="already"):
    with_unaligned_sources(extended)
  with pytest.raises(ValueError, match=r"\(B, H, W, 6\)"):
    extended(aligned0, aligned1)


def test_gradients_reach_the_captured_frames_from_the_start():
  extended = with_unaligned_sources(_perturbed(SepConvConfig.tiny(frame_average_init=True)))
  aligned0, aligned1, captured0, captured1, truth = _frames(5)

  def loss(model):
    out = model(jnp.concatenate([aligned0, captured0], -1),
                jnp.concatenate([aligned1, captured1], -1))
    return jnp.mean(jnp.abs(out - truth))

  grads = nnx.state(nnx.grad(loss)(extended), nnx.Param)
  flat = {path: value[...] for path, value in nnx.to_flat_state(grads)}
  for index in (2, 3):  # the captured frames' vertical kernels, zero at the start
    assert np.abs(flat[("vertical_subnets", index, "output_conv", "kernel")]).max() > 0
  first_kernel = flat[("encoder", 0, "convs", 0, "kernel")]
  for captured in (slice(3, 6), slice(9, 12)):  # the encoder's captured-frame channels
    assert np.abs(first_kernel[:, :, captured]).max() > 0


def test_the_interpolator_gives_it_both_pairs():
  first, second = _textured(64, 96, -4), _textured(64, 96, 4)
  original = _perturbed(SepConvConfig.tiny(frame_average_init=True))
  # Extended: what the original computes on the pre-aligned pair, tiled or not.
  expected = np.asarray(Interpolator(original, align=0.5)(first, second))
  for max_untiled_pixels in (None, 0):
    interpolator = Interpolator(with_unaligned_sources(original), align=0.5,
                                max_untiled_pixels=max_untiled_pixels,
                                tiles=TileSettings(size=64, overlap=16))
    out = np.asarray(interpolator(first, second))
    assert out.shape == (64, 96, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5 if max_untiled_pixels is None else 0.05)
  # A network whose captured-frame kernels are not zero: the pre-aligned frames, then the
  # captured ones, on channels.
  dual = _perturbed(SepConvConfig.tiny(frame_average_init=True, unaligned_sources=True), seed=3)
  aligned0, aligned1 = alignment.prealign(first[None], second[None], 0.5)
  manual = run_padded(lambda a, b: dual(a, b, conv=ConvOptions("float32")),
                      jnp.concatenate([aligned0, first[None]], -1),
                      jnp.concatenate([aligned1, second[None]], -1),
                      kernel_size=dual.config.kernel_size)
  out = np.asarray(Interpolator(dual, align=0.5, precision="float32")(first, second))
  np.testing.assert_allclose(out, np.asarray(manual[0]), atol=1e-5)
  assert not np.allclose(out, expected, atol=1e-3)
  maps = Interpolator(dual).kernel_maps(first, second)
  assert len(maps) == 4 and maps[0].shape == (64, 96, dual.config.kernel_size)


def test_a_fresh_network_starts_at_averaging_the_aligned_frames():
  net = SepConvNet(SepConvConfig.tiny(frame_average_init=True, unaligned_sources=True),
                   rngs=nnx.Rngs(0))
  aligned0, aligned1, captured0, captured1 = _frames(4)
  out = net(jnp.concatenate([aligned0, captured0], -1), jnp.concatenate([aligned1, captured1], -1),
            conv=ConvOptions("float32"))
  np.testing.assert_allclose(out, (aligned0 + aligned1) / 2, atol=0.01)



def test_captured_input_extends_exactly_and_learns_from_the_captured_frames():
  original = _perturbed(SepConvConfig.tiny(frame_average_init=True, kernel_normalisation=True))
  config = SepConvConfig.tiny(frame_average_init=True, kernel_normalisation=True,
                              captured_input=True)
  extended = with_captured_frames(original, config)
  assert extended.config == config and config.frame_channels == 6
  assert len(extended.vertical_subnets) == 2  # kernels for the pre-aligned pair only
  # One wider first convolution: 2 frames x 3 more channels x 3x3 x the first width.
  assert (count_parameters(config) - count_parameters(original.config)
          == 2 * 3 * 9 * config.channels[0])
  aligned0, aligned1, captured0, captured1, truth = _frames(5)
  frame0 = jnp.concatenate([aligned0, captured0], axis=-1)
  frame1 = jnp.concatenate([aligned1, captured1], axis=-1)
  np.testing.assert_array_equal(extended(frame0, frame1), original(aligned0, aligned1))
  loss = lambda model: jnp.mean(jnp.abs(model(frame0, frame1) - truth))
  grads = nnx.state(nnx.grad(loss)(extended), nnx.Param)
  first_kernel = dict(nnx.to_flat_state(grads))[("encoder", 0, "convs", 0, "kernel")][...]
  for captured in (slice(3, 6), slice(9, 12)):
    assert np.abs(first_kernel[:, :, captured]).max() > 0
  # The Interpolator hands it both pairs, as it does a network with unaligned sources.
  first, second = _textured(64, 96, -4), _textured(64, 96, 4)
  np.testing.assert_allclose(np.asarray(Interpolator(extended, align=0.5)(first, second)),
                             np.asarray(Interpolator(original, align=0.5)(first, second)),
                             atol=1e-5)
  with pytest.raises(ValueError, match="already"):
    with_captured_frames(extended, config)
  with pytest.raises(ValueError, match="not the network"):
    with_captured_frames(original, SepConvConfig.tiny(captured_input=True))
  with pytest.raises(ValueError, match="set one of them"):
    SepConvConfig(unaligned_sources=True, captured_input=True)
