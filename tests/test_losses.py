"""Losses: values against independent computations, gradients, the VGG loader and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from skimage.metrics import structural_similarity

from sepconv_jax.training import losses
from sepconv_jax.training.vgg import TORCHVISION_CONV_INDICES, VGGWeightsError, load_vgg19_features


def _batch(seed=0, shape=(2, 24, 20, 3)):
  rng = np.random.default_rng(seed)
  y = rng.uniform(size=shape).astype(np.float32)
  prediction = np.clip(y + rng.normal(scale=0.1, size=shape), 0, 1).astype(np.float32)
  return {"x0": y, "x1": y, "y": y}, prediction


def test_l1_and_l2():
  batch, prediction = _batch()
  assert np.isclose(losses.get_loss("l1")(batch, prediction), np.abs(prediction - batch["y"]).mean())
  assert np.isclose(losses.get_loss("l2")(batch, prediction), ((prediction - batch["y"])**2).mean())


def test_ssim_matches_scikit_image_gaussian_ssim():
  batch, prediction = _batch()
  expected = np.mean([
      structural_similarity(prediction[i], batch["y"][i], gaussian_weights=True, sigma=1.5,
                            use_sample_covariance=False, data_range=1.0, channel_axis=-1)
      for i in range(2)])
  assert abs(float(losses.ssim(prediction, batch["y"])) - expected) < 1e-5
  assert abs(float(losses.get_loss("ssim")(batch, prediction)) - (1 - expected)) < 1e-5
  assert float(losses.ssim(batch["y"], batch["y"])) == pytest.approx(1.0, abs=1e-6)


def test_motion_weighted_l1_weights_pixels_by_their_motion():
  batch, prediction = _batch()
  still = {**batch, "flow0": np.zeros((2, 24, 20, 2), np.float32)}
  still["flow1"] = still["flow0"]
  l1 = float(losses.l1_loss(batch, prediction))
  # No motion (or weight 0): exactly l1.
  assert float(losses.make_motion_weighted_l1(3.0)(still, prediction)) == pytest.approx(l1)
  assert losses.make_motion_weighted_l1(3.0) is losses.make_motion_weighted_l1(3.0)
  # One pixel moves 8 px to x0 and 20 px to x1 (weight 1 + 3 x min(1, 20 / 16) = 4), another 8 px
  # to x1 only (1 + 3 x 0.5 = 2.5); the weighted mean against a NumPy one.
  moving = {**still, "flow0": still["flow0"].copy(), "flow1": still["flow1"].copy()}
  moving["flow0"][0, 3, 4] = (8.0, 0.0)
  moving["flow1"][0, 3, 4] = (12.0, -16.0)
  moving["flow1"][1, 5, 6] = (0.0, 8.0)
  weights = np.ones((2, 24, 20), np.float32)
  weights[0, 3, 4], weights[1, 5, 6] = 4.0, 2.5
  np.testing.assert_allclose(losses.motion_weights(moving, 3.0)[..., 0], weights)
  error = np.abs(prediction - batch["y"]).mean(axis=-1)
  expected = (weights * error).sum() / weights.sum()
  got = float(losses.make_motion_weighted_l1(3.0)(moving, prediction))
  assert got == pytest.approx(expected, rel=1e-5) and got != pytest.approx(l1, rel=1e-5)
  assert losses.get_loss("l1", motion_weight=3.0) is losses.make_motion_weighted_l1(3.0)
  with pytest.raises(ValueError, match="only the l1 loss"):
    losses.get_loss("l2", motion_weight=3.0)


@pytest.mark.parametrize("name", ["l1", "l2", "ssim"])
def test_losses_are_differentiable_and_decrease_towards_the_target(name):
  batch, prediction = _batch(1)
  loss = losses.get_loss(name)
  grad = jax.grad(lambda p: loss(batch, p))(jnp.asarray(prediction))
  assert np.isfinite(np.asarray(grad)).all()
  assert float(loss(batch, prediction - 0.5 * grad / jnp.abs(grad).max() * 0.01)) < float(
      loss(batch, prediction))


def _fake_vgg_state(seed=0):
  """A state dict with torchvision VGG-19's names and shapes (random values) and extra keys."""
  rng = np.random.default_rng(seed)
  channels = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512]
  state = {}
  for index, (fan_in, fan_out) in zip(TORCHVISION_CONV_INDICES, zip(channels, channels[1:])):
    state[f"features.{index}.weight"] = (rng.normal(size=(fan_out, fan_in, 3, 3)) *
                                         np.sqrt(2 / (9 * fan_in))).astype(np.float32)
    state[f"features.{index}.bias"] = rng.normal(size=fan_out).astype(np.float32) * 0.01
  state["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # ignored
  return state


def test_vgg_loader_npz_and_pth_agree_with_a_hand_written_first_layer(tmp_path):
  import torch  # the test extra installs it
  state = _fake_vgg_state()
  np.savez(tmp_path / "vgg.npz", **state)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "vgg.pth")
  from_npz = load_vgg19_features(tmp_path / "vgg.npz")
  from_pth = load_vgg19_features(tmp_path / "vgg.pth")
  image = np.random.default_rng(1).uniform(size=(1, 32, 32, 3)).astype(np.float32)
  features = np.asarray(from_npz(image))
  assert features.shape == (1, 4, 4, 512)
  np.testing.assert_array_equal(features, np.asarray(from_pth(image)))

  # The first conv against torch, with the ImageNet normalisation applied by hand.
  normalised = (image - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  expected = torch.nn.functional.conv2d(
      torch.from_numpy(normalised.transpose(0, 3, 1, 2).astype(np.float32)),
      torch.from_numpy(state["features.0.weight"]), torch.from_numpy(state["features.0.bias"]),
      padding=1).relu().numpy().transpose(0, 2, 3, 1)
  first = jax.nn.relu(from_npz.convs[0](
      (jnp.asarray(image) - jnp.asarray([0.485, 0.456, 0.406])) / jnp.asarray([0.229, 0.224, 0.225])))
  np.testing.assert_allclose(np.asarray(first), expected, atol=1e-4)


def test_vgg_losses_use_the_weights(tmp_path):
  np.savez(tmp_path / "vgg.npz", **_fake_vgg_state())
  batch, prediction = _batch(2, shape=(1, 32, 32, 3))
  vgg = losses.get_loss("vgg", vgg_weights=tmp_path / "vgg.npz")
  combined = losses.get_loss("l1+vgg", nu=0.5, vgg_weights=tmp_path / "vgg.npz")
  assert float(vgg(batch, prediction)) > 0
  assert float(vgg(batch, batch["y"])) == 0
  assert np.isclose(float(combined(batch, prediction)),
                    float(losses.l1_loss(batch, prediction)) + 0.5 * float(vgg(batch, prediction)),
                    rtol=1e-5)


def test_vgg_loss_errors(tmp_path):
  with pytest.raises(ValueError, match="VGG-19 weights"):
    losses.get_loss("vgg")
  with pytest.raises(VGGWeightsError, match="not found"):
    losses.get_loss("l1+vgg", vgg_weights=tmp_path / "missing.npz")
  state = _fake_vgg_state()
  del state["features.25.weight"]
  np.savez(tmp_path / "partial.npz", **state)
  with pytest.raises(VGGWeightsError, match="features.25.weight"):
    load_vgg19_features(tmp_path / "partial.npz")
  (tmp_path / "corrupt.npz").write_bytes(b"not an archive")
  with pytest.raises(VGGWeightsError, match="cannot read"):
    load_vgg19_features(tmp_path / "corrupt.npz")
  with pytest.raises(ValueError, match="unknown loss"):
    losses.get_loss("l3")


def test_kernel_centroids_and_the_centroid_loss():
  from sepconv_jax.network.model import KernelMaps  # pylint: disable=import-outside-toplevel
  k = 7
  one_hot = lambda offset: jax.nn.one_hot(jnp.full((1, 2, 3), k // 2 + offset), k)
  np.testing.assert_allclose(losses.kernel_centroids(one_hot(2)), 2.0, atol=1e-5)
  np.testing.assert_allclose(losses.kernel_centroids(-0.5 * one_hot(-3)), -3.0, atol=1e-5)
  flow = jnp.zeros((1, 2, 3, 2)).at[..., 0].set(2.0).at[..., 1].set(-1.0)  # dx 2, dy -1
  batch = {"flow0": flow, "flow1": -flow, "valid0": jnp.ones((1, 2, 3)),
           "valid1": jnp.ones((1, 2, 3))}
  matching = KernelMaps(vertical0=one_hot(-1), horizontal0=one_hot(2), vertical1=one_hot(1),
                        horizontal1=one_hot(-2))
  assert float(losses.kernel_centroid_loss(batch, matching)) == pytest.approx(0.0, abs=1e-5)
  centred = KernelMaps(*(one_hot(0),) * 4)
  # |0 - 2| + |0 - (-1)| per pixel and frame, over 2 axes: 1.5 px on average.
  assert float(losses.kernel_centroid_loss(batch, centred)) == pytest.approx(1.5, abs=1e-5)
  # Invalid flow and flow beyond the kernels' reach (K//2 = 3) do not count.
  masked = {**batch, "valid1": jnp.zeros((1, 2, 3)),
            "flow0": flow.at[0, 0, 0, 0].set(9.0)}
  assert float(losses.kernel_centroid_loss(masked, centred)) == pytest.approx(1.5, abs=1e-5)
  assert float(losses.centroid_weight(jnp.asarray(50), 0.2, 100)) == pytest.approx(0.1)
  assert float(losses.centroid_weight(jnp.asarray(500), 0.2, 100)) == 0.0
  assert float(losses.centroid_weight(jnp.asarray(500), 0.2, None)) == pytest.approx(0.2)
