"""The shipped default model: it loads offline, is the published architecture, has learned motion,
and the README's first command runs with it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import sepconv_jax
from sepconv_jax import SepConvConfig, read_metadata
from sepconv_jax.evaluation import scoring
from sepconv_jax.inference import media
from sepconv_jax.inference.interpolator import DEFAULT_MODEL_DIR, Interpolator

ROOT = pathlib.Path(__file__).resolve().parent.parent
STREET = ROOT / "samples" / "street_0.png"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_interpolator():
  return Interpolator.default()


def test_the_default_model_is_small_full_width_and_documented():
  size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
  assert size < 45e6, size  # float16 storage
  config = SepConvConfig.from_dict(read_metadata(DEFAULT_MODEL_DIR)["config"])
  assert config.channels == SepConvConfig().channels and config.kernel_size == 51
  assert (DEFAULT_MODEL_DIR.parent / "MODEL_CARD.md").is_file()
  assert sepconv_jax.Interpolator is Interpolator  # the README's `from sepconv_jax import ...`


def _moving_street(shift: int, left: int = 100):
  """(first, middle, second): 128x128 crops of the street image moving `shift` px per frame."""
  image = media.read_image(STREET)
  crop = lambda offset: image[64:192, left + offset:left + 128 + offset]
  return crop(0), crop(shift), crop(2 * shift)


@pytest.mark.parametrize("shift", [3, 4])
def test_the_default_model_follows_motion_that_averaging_ghosts(default_interpolator, shift):
  """A real image moving `shift` pixels per frame: the middle frame is known exactly, and frame
  averaging shows a double image that a model which has learned motion must beat clearly."""
  first, middle, second = _moving_street(shift, left=160)
  average = scoring.average_baseline(first, second)
  prediction = default_interpolator(first, second)
  assert prediction.dtype == np.uint8 and prediction.shape == first.shape
  assert scoring.psnr(prediction, middle) > scoring.psnr(average, middle) + 1.0


def test_the_default_model_recommends_pre_alignment_and_it_helps(default_interpolator):
  """The default model runs with half the motion pre-aligned (its metadata says so), which beats
  the network alone on a real image moving 3 px per frame (31.9 against 30.4 dB measured)."""
  assert default_interpolator.align == 0.5
  first, middle, second = _moving_street(3)
  alone = Interpolator.default(align=0.0)(first, second)
  aligned = default_interpolator(first, second)
  assert scoring.psnr(aligned, middle) > scoring.psnr(alone, middle) + 0.5


def test_the_default_model_recommends_consensus_and_it_helps(default_interpolator):
  """The default model blends in the mean of the frames warped all the way where they agree
  (its metadata says so): on a real image moving 3 px per frame, where the flow is right, that
  beats the network's frame alone."""
  assert default_interpolator.consensus == 0.75
  first, middle, second = _moving_street(3)
  network_only = Interpolator.default(consensus=0.0)(first, second)
  blended = default_interpolator(first, second)
  assert scoring.psnr(blended, middle) > scoring.psnr(network_only, middle) + 0.3


def test_readme_first_command_interpolates_the_shipped_pair(tmp_path):
  out = tmp_path / "middle.png"
  sepconv = pathlib.Path(sys.executable).parent / "sepconv"  # the installed console script
  done = subprocess.run([sepconv, "interpolate", "--pair", "samples/street_0.png",
                         "samples/street_1.png", "--out", out], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  middle = media.read_image(out)
  first, second = (media.read_image(ROOT / "samples" / f"street_{i}.png") for i in (0, 1))
  assert middle.shape == first.shape
  # Between its inputs, and not simply one of them.
  assert np.abs(middle.astype(float) - first).mean() > 0.5
  assert np.abs(middle.astype(float) - second).mean() > 0.5


def test_bfloat16_matches_float32_on_real_frames(default_interpolator):
  """The shipped pair at full size: bfloat16 convolutions (the default on CPUs with bfloat16
  units) change the uint8 middle frame by far less than the model's own error."""
  first, second = (media.read_image(ROOT / "samples" / f"street_{i}.png") for i in (0, 1))
  outputs = {p: Interpolator.default(precision=p)(first, second) for p in ("float32", "bfloat16")}
  assert scoring.psnr(outputs["bfloat16"], outputs["float32"]) > 55.0  # 63.8 measured
  assert np.abs(outputs["bfloat16"].astype(int) - outputs["float32"]).max() <= 4  # 2 measured
