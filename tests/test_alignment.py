"""Pre-alignment along DIS optical flow: the warp, the middle flows, the Interpolator option."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

from sepconv_data import flow
from sepconv_jax import save_model
from sepconv_jax.inference import alignment
from sepconv_jax.inference.interpolator import Interpolator, TileSettings
from sepconv_jax.network.checkpoint import recommended_align, recommended_consensus
from tests.test_interpolator import model  # noqa: F401  (the tiny model fixture)

STREET = pathlib.Path(__file__).resolve().parents[1] / "samples" / "street_0.png"


def _textured(height, width, shift_x=0.0):
  """A crop of the shipped street photo (DIS needs real texture), float32 RGB in [0, 1], its
  content moved `shift_x` px to the right (bilinear for fractional shifts)."""
  image = cv2.cvtColor(cv2.imread(str(STREET)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
  grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
  return cv2.remap(image, grid_x + 200 - shift_x, grid_y + 100, cv2.INTER_LINEAR)


def test_warp_moves_content_by_the_flow():
  frame = _textured(40, 60)
  shift = np.zeros((40, 60, 2), np.float32)
  shift[..., 0] = 3.0  # out[y, x] = frame[y, x + 3]
  np.testing.assert_allclose(flow.warp(frame, shift)[:, :-3], frame[:, 3:], atol=1e-5)


@pytest.mark.parametrize("downscale", [1, 2])
def test_middle_flows_of_a_translation(downscale):
  first, second = (np.rint(_textured(96, 128, s) * 255).astype(np.uint8) for s in (-6, 6))
  flow0, flow1 = flow.estimated_middle_flows(first, second, downscale=downscale)
  assert flow0.shape == flow1.shape == (96, 128, 2)
  interior = (slice(16, -16), slice(24, -24))
  # The content moves +12 px from first to second: the middle sees first 6 px left, second right.
  np.testing.assert_allclose(np.median(flow0[interior], axis=(0, 1)), [-6, 0], atol=0.5)
  np.testing.assert_allclose(np.median(flow1[interior], axis=(0, 1)), [6, 0], atol=0.5)


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_prealign_removes_that_share_of_the_motion(strength):
  first, second = _textured(96, 128, -6), _textured(96, 128, 6)
  aligned0, aligned1 = alignment.prealign(first[None], second[None], strength)
  remaining = 6 * (1 - strength)  # px each frame still is from the middle
  interior = (slice(16, -16), slice(24, -24))
  for aligned, expected in ((aligned0, _textured(96, 128, -remaining)),
                            (aligned1, _textured(96, 128, remaining))):
    error = np.abs(aligned[0] - expected)[interior].mean()
    assert error < 0.01, error
  # Strength 0 is the identity.
  np.testing.assert_array_equal(alignment.prealign(first[None], second[None], 0.0)[0], first[None])


def test_warp_pairs_computes_each_strength_from_one_flow():
  first, second = _textured(64, 80, -4)[None], _textured(64, 80, 4)[None]
  half, full, none = alignment.warp_pairs(first, second, (0.5, 1.0, 0.0))
  for pair, strength in ((half, 0.5), (full, 1.0)):
    for got, expected in zip(pair, alignment.prealign(first, second, strength)):
      np.testing.assert_array_equal(got, expected)
  assert none[0] is first and none[1] is second


def test_blend_consensus_trusts_the_warp_only_where_everything_agrees():
  rng = np.random.default_rng(0)
  middle = rng.uniform(0.2, 0.8, (1, 32, 32, 3)).astype(np.float32)
  network = middle + 2 / 255  # close to the warped frames' mean: blended nearly all the way
  out = alignment.blend_consensus(network, middle, middle, 0.75)
  weight = alignment.consensus_weight(network, middle, middle, 0.75)
  assert 0.7 < weight.min() <= weight.max() <= 0.75
  np.testing.assert_allclose(out, network + weight * (middle - network), atol=1e-6)
  # The warped frames disagree (the flow failed): the network's frame stays.
  other = np.clip(middle + 0.3, 0, 1)
  np.testing.assert_allclose(alignment.blend_consensus(network, middle, other, 0.75), network,
                             atol=1e-3)
  # They agree with each other but not with the network (e.g. both show the background where an
  # object moves): the network's frame stays.
  far = np.clip(network + 0.4, 0, 1)
  np.testing.assert_allclose(alignment.blend_consensus(far, middle, middle, 0.75), far,
                             atol=1e-3)
  # Strength 0 is the network's frame exactly; strengths outside [0, 1] are refused.
  assert alignment.blend_consensus(network, middle, middle, 0.0) is network
  with pytest.raises(ValueError, match="consensus"):
    alignment.blend_consensus(network, middle, middle, 1.5)


def test_prealign_checks_its_strength():
  frame = np.zeros((1, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="strength"):
    alignment.prealign(frame, frame, 1.5)


def test_flow_downscale_keeps_flows_small():
  assert alignment.flow_downscale(480, 854) == 1
  assert alignment.flow_downscale(1080, 1920) == 2
  assert alignment.flow_downscale(2160, 3840) == 4


@pytest.mark.parametrize("height,width", [(1, 1), (5, 7), (11, 11), (2, 300), (40, 3)])
def test_dis_flow_takes_frames_smaller_than_dis_does(height, width):
  # DIS itself rejects these sizes (under 8 px a side, or under 12 on both).
  frame = np.clip(np.rint(_textured(height, width) * 255), 0, 255).astype(np.uint8)
  still = flow.dis_flow(frame, frame)
  assert still.shape == (height, width, 2)
  np.testing.assert_allclose(still, 0.0, atol=0.05)


def test_a_small_frame_leaves_later_flows_alone():
  # DIS lowers its finest scale for good on a frame under ~46 px (then a fresh instance is used).
  def as_uint8(frame):
    return np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8)
  first, second = as_uint8(_textured(96, 128, -3)), as_uint8(_textured(96, 128, 3))
  before = flow.dis_flow(first, second)
  tiny = as_uint8(_textured(20, 20))
  flow.dis_flow(tiny, tiny)
  np.testing.assert_array_equal(flow.dis_flow(first, second), before)
  assert flow._dis().getFinestScale() == 1  # the MEDIUM preset's


def test_interpolator_aligns_frames_smaller_than_dis_takes(model):  # noqa: F811
  first, second = _textured(5, 7, -1), _textured(5, 7, 1)
  out = np.asarray(Interpolator(model, align=0.5, consensus=0.75)(first, second))
  assert out.shape == (5, 7, 3) and np.isfinite(out).all()


def test_interpolator_runs_the_network_on_the_aligned_pair(model):  # noqa: F811
  first, second = _textured(64, 80, -4), _textured(64, 80, 4)
  aligned0, aligned1 = alignment.prealign(first[None], second[None], 0.5)
  expected = np.asarray(Interpolator(model)(aligned0[0], aligned1[0]))
  # Tiled or not, the alignment is of the whole frames, before tiling.
  for max_untiled_pixels in (None, 0):
    interpolator = Interpolator(model, align=0.5, max_untiled_pixels=max_untiled_pixels,
                                tiles=TileSettings(size=64, overlap=16))
    out = np.asarray(interpolator(first, second))
    tolerance = 1e-5 if max_untiled_pixels is None else 0.02  # tiles see less context
    np.testing.assert_allclose(out, expected, atol=tolerance)
  # BGR checkpoints: the flow is of the RGB frames; the network sees the aligned frames in BGR.
  bgr = np.asarray(Interpolator(model, align=0.5, channel_order="BGR")(first, second))
  seen_as_bgr = np.asarray(Interpolator(model)(aligned0[0, ..., ::-1], aligned1[0, ..., ::-1]))
  np.testing.assert_allclose(bgr, seen_as_bgr[..., ::-1], atol=1e-5)


def test_interpolator_blends_the_consensus_after_the_network(model):  # noqa: F811
  first, second = _textured(64, 80, -4), _textured(64, 80, 4)
  (aligned0, aligned1), (middle0, middle1) = alignment.warp_pairs(first[None], second[None],
                                                                  (0.5, 1.0))
  network = np.asarray(Interpolator(model)(aligned0[0], aligned1[0]))[None]
  expected = alignment.blend_consensus(network, middle0, middle1, 0.75)[0]
  for max_untiled_pixels in (None, 0):
    interpolator = Interpolator(model, align=0.5, consensus=0.75,
                                max_untiled_pixels=max_untiled_pixels,
                                tiles=TileSettings(size=64, overlap=16))
    out = np.asarray(interpolator(first, second))
    tolerance = 1e-5 if max_untiled_pixels is None else 0.02  # tiles see less context
    np.testing.assert_allclose(out, expected, atol=tolerance)
  # Without pre-alignment the network sees the captured frames; the blend is the same.
  network = np.asarray(Interpolator(model)(first, second))[None]
  np.testing.assert_allclose(np.asarray(Interpolator(model, consensus=0.75)(first, second)),
                             alignment.blend_consensus(network, middle0, middle1, 0.75)[0],
                             atol=1e-5)
  # BGR checkpoints: the flow is of the RGB frames, the blend in the model's channel order.
  bgr = np.asarray(Interpolator(model, align=0.5, consensus=0.75, channel_order="BGR")(
      first, second))
  network_bgr = np.asarray(Interpolator(model)(aligned0[0, ..., ::-1], aligned1[0, ..., ::-1]))
  expected_bgr = alignment.blend_consensus(network_bgr[None], middle0[..., ::-1],
                                           middle1[..., ::-1], 0.75)[0]
  np.testing.assert_allclose(bgr, expected_bgr[..., ::-1], atol=1e-5)


def test_interpolator_checks_align_and_consensus(model):  # noqa: F811
  with pytest.raises(ValueError, match="align"):
    Interpolator(model, align=-0.1)
  with pytest.raises(ValueError, match="consensus"):
    Interpolator(model, consensus=1.1)


def test_a_checkpoint_recommends_its_strength(model, tmp_path):  # noqa: F811
  assert recommended_align({"info": {"align": 0.5, "train_config": {"prealign": 0.3}}}) == 0.5
  assert recommended_align({"info": {"train_config": {"prealign": 0.3}}}) == 0.3
  assert recommended_align({"info": {}}) == recommended_align({}) == 0.0
  save_model(tmp_path / "aligned", model, info={"align": 0.25})
  save_model(tmp_path / "plain", model)
  assert Interpolator.from_checkpoint(tmp_path / "aligned").align == 0.25
  assert Interpolator.from_checkpoint(tmp_path / "aligned", align=0.0).align == 0.0
  assert Interpolator.from_checkpoint(tmp_path / "plain").align == 0.0


def test_a_checkpoint_recommends_its_consensus(model, tmp_path):  # noqa: F811
  assert recommended_consensus({"info": {"consensus": 0.75}}) == 0.75
  assert recommended_consensus({"info": {}}) == recommended_consensus({}) == 0.0
  save_model(tmp_path / "blended", model, info={"consensus": 0.5})
  assert Interpolator.from_checkpoint(tmp_path / "blended").consensus == 0.5
  assert Interpolator.from_checkpoint(tmp_path / "blended", consensus=0.0).consensus == 0.0
