"""Evaluation on standard frame-interpolation sets: readers, metrics, baselines and the loop.

Conventions
  Frames    (H, W, 3) uint8 RGB, as `sepconv_jax.media.read_image` returns them and
            `sepconv_jax.Interpolator` takes and gives them.
  Items     The readers yield `Triplet(name, first, second, truth, mask)`: the two input frames,
            the true middle frame and, for UCF101 with its motion masks, the (H, W) bool motion
            region (else None). Each reader checks its root and lists its items when called (so that a
            wrong path fails before a model loads) and decodes the frames lazily, one item at a time.
  Metrics   as the field reports them: all on RGB frames quantised to uint8 (float predictions in
            [0, 1] are clipped and rounded, not truncated), data range 255, no border crop, one
            value per item, averaged over the set:
              psnr           MSE in float64 over every pixel and channel. Identical frames are
                             capped at `MAX_PSNR` (as `sepconv_jax.metrics`) so means stay finite.
              ssim           scikit-image's `structural_similarity(channel_axis=-1, data_range=255)`
                             with its defaults (7x7 uniform window, sample covariance), averaged
                             over channels: the SSIM the published SepConv numbers use.
              ssim_gaussian  the "MATLAB" SSIM of Wang et al.: 11x11 Gaussian window, sigma 1.5,
                             population covariance (scikit-image's documented settings for it);
                             optional, always labelled as such.
              psnr_masked    PSNR inside the motion region only, as DVF's evaluation script
                             computes it: MSE = sum(((p - t) * m)^2) / (3 sum(m)) for a 0/1
                             region m. Items with an empty region (or identical regions) have no
                             value and are left out of its mean, as in that script.
              psnr_motion    (optional) PSNR by motion magnitude, `psnr_masked` over the pixels of
                             each of `MOTION_BUCKETS`: a pixel's motion is the larger |DIS optical
                             flow| (OpenCV, full resolution) from the true middle frame to either
                             input frame, so ">16px" is where an object moves more than 16 pixels
                             between the middle and an input frame.
  Masks     The UCF101 motion masks (`motion_mask.png`, 0/255) mark the moving pixels **black**
            (0): over the 379 triplets the mean |frame_00 - frame_02| is 26.3 levels on the black
            pixels and 5.6 on the white ones (white covers 85% of a frame on average, and the
            black blobs sit on the moving hands, drumsticks, ...). The reader therefore gives
            `mask = (motion_mask.png < 128)`, True on motion. (DVF's script weights by the file's
            values / 255, i.e. the white pixels, with its copy of the masks; which polarity the
            published "motion" numbers used is not settled here.)
  Timing    Seconds of one `predict` call per item (the result fetched to the host), after an
            untimed warm-up call on the first item of each frame size, so that jit compilation is
            not counted. Reading frames and computing metrics are not counted either.

Layouts (`read_dataset(name, root)`):
  middlebury  the "other" set with ground truth, either `<root>/<Seq>/frame10.png, frame11.png,
              frame10i11.png` (as distributed with the SepConv reference code) or the official
              `<root>/other-data/<Seq>/frame10.png, frame11.png` +
              `<root>/other-gt-interp/<Seq>/frame10i11.png`.
  ucf101      the DVF triplets `<root>/<id>/frame_00.png, frame_01_gt.png, frame_02.png` (or a
              root holding `ucf101_interp_ours/`); motion masks `<masks>/<id>/motion_mask.png`
              are found next to the triplets as `motion_masks_ucf101_interp/` unless given.
  video       the replication paper's protocol on real video: frames (n-1, n, n+1) every `every`
              (30) frames, n = 1, 1 + every, ...; predict frame n. The root is a video file, a
              folder of videos, or a folder of image frames (one sequence).
  davis       full 854x480 frames of DAVIS sequences (`<root>/JPEGImages/480p/<seq>/` or
              `<root>/<seq>/`), triplets (n - gap, n, n + gap) every `every` (10) frames, from
              the sequences named (default `DAVIS_HELD_OUT`: the DAVIS sequences the project's
              training data holds out for validation). `gap` 2 skips a frame on each side,
              doubling the motion: the held-out sequences move at most ~19 px between frames.

This module's code uses NumPy, OpenCV (through `sepconv_jax.media`) and scikit-image, no jax
(predictors are passed in); PyAV (through `sepconv_jax.video`) only for videos.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import statistics
import time
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
from skimage.metrics import structural_similarity

from sepconv_jax import media

DATASETS = ("middlebury", "ucf101", "video", "davis")
BASELINE_NAMES = ("average", "repeat")
# Same cap as sepconv_jax.metrics.MAX_PSNR (a test keeps them equal).
MAX_PSNR = 100.0
VIDEO_EVERY = 30
DAVIS_EVERY = 10
# The DAVIS sequences the training cache holds out for validation (`sepconv prepare
# --validation-sequences`, see the model card): never trained on by the shipped models.
DAVIS_HELD_OUT = ("cows", "drift-chicane")
# (name, lower, upper) in pixels of motion between the middle frame and the farther input frame.
MOTION_BUCKETS = (("<4px", 0.0, 4.0), ("4-16px", 4.0, 16.0), (">16px", 16.0, math.inf))
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")

SSIM_LABEL = "SSIM (scikit-image: 7x7 uniform window)"
SSIM_GAUSSIAN_LABEL = "SSIM-G (11x11 Gaussian, sigma 1.5: 'MATLAB' SSIM)"

# Middlebury file names (frames 10 and 11, the true frame "10i11" between them).
_MB_FIRST, _MB_SECOND, _MB_TRUTH = "frame10.png", "frame11.png", "frame10i11.png"
_MB_DATA, _MB_GT = "other-data", "other-gt-interp"
_UCF_FILES = ("frame_00.png", "frame_02.png", "frame_01_gt.png")  # first, second, truth
_UCF_TRIPLETS = "ucf101_interp_ours"
_UCF_MASKS = "motion_masks_ucf101_interp"
_UCF_MASK_FILE = "motion_mask.png"


class EvaluationError(Exception):
  """A dataset root that is missing, empty or not in the expected layout (one line for the user)."""


class Triplet(NamedTuple):
  """One evaluation item: two input frames, the true middle frame, an optional motion region."""
  name: str
  first: np.ndarray
  second: np.ndarray
  truth: np.ndarray
  mask: np.ndarray | None = None  # (H, W) bool, True on the region to score (UCF101 motion)


# ------------------------------------------------------------------------------------------------
# Metrics


def to_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 as is; floats in [0, 1] clipped, scaled and rounded (not truncated)."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {image.dtype}")
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pair(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  prediction, truth = to_uint8(prediction), to_uint8(truth)
  if prediction.shape != truth.shape or prediction.ndim != 3:
    raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must be the same "
                     "(H, W, C)")
  return prediction, truth


def psnr(prediction: np.ndarray, truth: np.ndarray) -> float:
  """PSNR in dB over all pixels and channels of uint8-quantised frames, data range 255."""
  prediction, truth = _pair(prediction, truth)
  mse = np.mean((prediction.astype(np.float64) - truth.astype(np.float64))**2)
  return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10.0 * math.log10(255.0**2 / mse))


def ssim(prediction: np.ndarray, truth: np.ndarray) -> float:
  """scikit-image's default SSIM (7x7 uniform window), data range 255, mean over channels."""
  prediction, truth = _pair(prediction, truth)
  return float(structural_similarity(prediction, truth, channel_axis=-1, data_range=255))


def ssim_gaussian(prediction: np.ndarray, truth: np.ndarray) -> float:
  """The 'MATLAB' SSIM: 11x11 Gaussian window (sigma 1.5), population covariance, range 255."""
  prediction, truth = _pair(prediction, truth)
  return float(structural_similarity(prediction, truth, channel_axis=-1, data_range=255,
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False))


def psnr_masked(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float | None:
  """PSNR inside `mask` ((H, W) bool or 0/1 weights); None for an empty or error-free region."""
  prediction, truth = _pair(prediction, truth)
  weight = np.asarray(mask, np.float64)
  if weight.shape != prediction.shape[:2]:
    raise ValueError(f"mask {weight.shape} does not match the frames {prediction.shape[:2]}")
  total = weight.sum()
  if total == 0:
    return None
  error = (prediction.astype(np.float64) - truth.astype(np.float64)) * weight[..., None]
  mse = np.sum(error**2) / (prediction.shape[2] * total)
  return None if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def motion_magnitude(first: np.ndarray, second: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """(H, W) float32 pixels: the larger |DIS flow| from `truth` to `first` and to `second`."""
  from sepconv_data.flow import flow_magnitude  # OpenCV's DIS  # pylint: disable=import-outside-toplevel
  truth = to_uint8(truth)
  return np.maximum(flow_magnitude(truth, to_uint8(first), downscale=1),
                    flow_magnitude(truth, to_uint8(second), downscale=1)).astype(np.float32)


def psnr_by_motion(prediction: np.ndarray, truth: np.ndarray, motion: np.ndarray
                   ) -> dict[str, float | None]:
  """`psnr_masked` over the pixels of each of `MOTION_BUCKETS` (None where a bucket is empty)."""
  return {name: psnr_masked(prediction, truth, (motion >= low) & (motion < high))
          for name, low, high in MOTION_BUCKETS}


# ------------------------------------------------------------------------------------------------
# Baselines: the same (first, second) -> uint8 signature as a model's predictor.


def average_baseline(first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """Frame averaging, rounded to uint8 (ties to even, as the model's output is rounded)."""
  return np.round((first.astype(np.float32) + second.astype(np.float32)) / 2).astype(np.uint8)


def repeat_baseline(first: np.ndarray, second: np.ndarray) -> np.ndarray:
  """Frame repetition: the first frame stands in for the middle one."""
  del second
  return np.array(first, copy=True)


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": average_baseline,
    "repeat": repeat_baseline,
}


# ------------------------------------------------------------------------------------------------
# Readers


def _check_root(root: str | os.PathLike, *, what: str, directory: bool = True) -> pathlib.Path:
  path = pathlib.Path(root)
  if not path.exists():
    raise EvaluationError(f"{what} root {os.fspath(root)} does not exist")
  if directory and not path.is_dir():
    raise EvaluationError(f"{what} root {os.fspath(root)} is not a directory")
  return path


def _natural_key(name: str) -> list:
  # "2" before "11": UCF101 ids and video names sort as numbers.
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
  try:
    entries = [entry for entry in path.iterdir()
               if entry.is_dir() and not entry.name.startswith(".")]
  except OSError as error:
    raise EvaluationError(f"{os.fspath(path)}: cannot list ({error.strerror or error})") from None
  return sorted(entries, key=lambda entry: _natural_key(entry.name))


def _require(paths: Iterable[pathlib.Path]) -> None:
  for path in paths:
    if not path.is_file():
      raise EvaluationError(f"{os.fspath(path)}: file not found")


def _load(listing: list[tuple[str, pathlib.Path, pathlib.Path, pathlib.Path, pathlib.Path | None]]
          ) -> Iterator[Triplet]:
  for name, first, second, truth, mask in listing:
    mask_array = None
    if mask is not None:
      # Motion is black in the mask files (module docstring); grey comes back as 3 equal channels.
      mask_array = media.read_image(mask)[..., 0] < 128
    yield Triplet(name, media.read_image(first), media.read_image(second),
                  media.read_image(truth), mask_array)


def read_middlebury(root: str | os.PathLike) -> Iterator[Triplet]:
  """The Middlebury "other" sequences with ground truth, in either layout (module docstring)."""
  root = _check_root(root, what="middlebury")
  expected = (f"expected <Seq>/{_MB_FIRST}, {_MB_SECOND}, {_MB_TRUTH} or {_MB_DATA}/<Seq>/ + "
              f"{_MB_GT}/<Seq>/")
  listing = []
  data, gt = root / _MB_DATA, root / _MB_GT
  if data.is_dir() or gt.is_dir():
    if not (data.is_dir() and gt.is_dir()):
      missing = gt if data.is_dir() else data
      raise EvaluationError(f"{os.fspath(missing)} not found: the official Middlebury layout "
                            f"needs both {_MB_DATA}/ and {_MB_GT}/")
    for sequence in _subdirs(gt):
      truth = sequence / _MB_TRUTH
      if not truth.is_file():
        continue
      first, second = data / sequence.name / _MB_FIRST, data / sequence.name / _MB_SECOND
      _require((first, second))
      listing.append((sequence.name, first, second, truth, None))
  else:
    for sequence in _subdirs(root):
      truth = sequence / _MB_TRUTH
      if not truth.is_file():
        continue  # e.g. a sequence of the eval set, whose true middle frame is not public
      first, second = sequence / _MB_FIRST, sequence / _MB_SECOND
      _require((first, second))
      listing.append((sequence.name, first, second, truth, None))
  if not listing:
    raise EvaluationError(f"no Middlebury sequences with ground truth under {os.fspath(root)} "
                          f"({expected})")
  return _load(listing)


def ucf101_folders(root: str | os.PathLike, masks: str | os.PathLike | None = "auto"
                   ) -> tuple[pathlib.Path, pathlib.Path | None]:
  """(triplet folder, motion-mask folder or None) for the UCF101 set at `root` (`read_ucf101`)."""
  root = _check_root(root, what="ucf101")
  if (root / _UCF_TRIPLETS).is_dir():
    root = root / _UCF_TRIPLETS
  if isinstance(masks, str) and masks == "auto":
    found = [c for c in (root / _UCF_MASKS, root.parent / _UCF_MASKS) if c.is_dir()]
    return root, (found[0] if found else None)
  if masks is None:
    return root, None
  return root, _check_root(masks, what="motion mask")


def read_ucf101(root: str | os.PathLike, masks: str | os.PathLike | None = "auto"
                ) -> Iterator[Triplet]:
  """The DVF UCF101 triplets (module docstring).

  Args:
    root: The folder of `<id>/` triplet folders, or one holding `ucf101_interp_ours/`.
    masks: The folder of `<id>/motion_mask.png` files; "auto" looks for
      `motion_masks_ucf101_interp/` in or next to the triplets; None reads no masks. Items
      without a mask file get `mask=None`.
  """
  root, masks = ucf101_folders(root, masks)
  listing = []
  for item in _subdirs(root):
    first, second, truth = (item / name for name in _UCF_FILES)
    if not truth.is_file():
      continue
    _require((first, second))
    mask = None
    if masks is not None and (masks / item.name / _UCF_MASK_FILE).is_file():
      mask = masks / item.name / _UCF_MASK_FILE
    listing.append((item.name, first, second, truth, mask))
  if not listing:
    raise EvaluationError(f"no UCF101 triplets under {os.fspath(root)} (expected "
                          f"<id>/{_UCF_FILES[0]}, {_UCF_FILES[2]}, {_UCF_FILES[1]})")
  return _load(listing)


def frame_triplets(frames: Iterable[np.ndarray], name: str, every: int, gap: int = 1
                    ) -> Iterator[Triplet]:
  """Triplets (n - gap, n, n + gap) for n = gap, gap + every, ... from a stream of frames."""
  window: list[np.ndarray] = []
  for index, frame in enumerate(frames):
    offset = index % every
    if offset == 0:
      window = [frame]
    elif offset in (gap, 2 * gap) and len(window) == offset // gap:
      window.append(frame)
      if offset == 2 * gap:
        middle = index - gap
        yield Triplet(f"{name}/{middle:06d}", window[0], window[2], window[1])
        window = []


def _video_frames(path: pathlib.Path) -> Iterator[np.ndarray]:
  from sepconv_jax import video  # PyAV: only needed here  # pylint: disable=import-outside-toplevel
  with video.VideoReader(path) as reader:
    for rgb, _ in reader.frames():
      yield rgb


def read_video(root: str | os.PathLike, every: int = VIDEO_EVERY) -> Iterator[Triplet]:
  """Triplets every `every` frames from a video file, a folder of videos or a folder of frames.

  Item names are `<video or folder name>/<index of the middle frame>`.
  """
  if every < 3:
    raise ValueError(f"every={every} must be at least 3 (triplets must not overlap)")
  root = _check_root(root, what="video", directory=False)
  if root.is_file():
    sources = [("video", root)]
  else:
    try:
      videos = sorted((entry for entry in root.iterdir()
                       if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES
                       and not entry.name.startswith(".")),
                      key=lambda entry: _natural_key(entry.name))
    except OSError as error:
      raise EvaluationError(f"{os.fspath(root)}: cannot list ({error.strerror or error})") from None
    if videos:
      sources = [("video", path) for path in videos]
    else:
      images = media.list_images(root)
      if len(images) < 3:
        raise EvaluationError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) and fewer than 3 image "
                              f"frames in {os.fspath(root)}")
      sources = [("frames", root)]

  def generate() -> Iterator[Triplet]:
    for kind, path in sources:
      if kind == "video":
        yield from frame_triplets(_video_frames(path), path.stem, every)
      else:
        frames = (media.read_image(image) for image in media.list_images(path))
        yield from frame_triplets(frames, path.name, every)

  return generate()


def read_davis(root: str | os.PathLike, sequences: Iterable[str] = DAVIS_HELD_OUT,
               every: int = DAVIS_EVERY, gap: int = 1) -> Iterator[Triplet]:
  """Full-frame triplets every `every` frames of the named DAVIS sequences (module docstring):
  frames (n - gap, n, n + gap), so that `gap` 2 doubles the motion to interpolate.

  Item names are `<sequence>/<index of the middle frame>`.
  """
  if gap < 1 or every < 2 * gap + 1:
    raise ValueError(f"every={every} must be at least 2 * gap + 1 = {2 * gap + 1} (triplets "
                     "must not overlap) and gap at least 1")
  root = _check_root(root, what="davis")
  base = root / "JPEGImages" / "480p" if (root / "JPEGImages" / "480p").is_dir() else root
  folders = []
  for name in sequences:
    folder = base / name
    if not folder.is_dir():
      raise EvaluationError(f"davis: no sequence {name!r} under {os.fspath(base)}")
    if len(media.list_images(folder)) < 3:
      raise EvaluationError(f"davis: {os.fspath(folder)} has fewer than 3 frames")
    folders.append(folder)
  if not folders:
    raise EvaluationError("davis: no sequences named")

  def generate() -> Iterator[Triplet]:
    for folder in folders:
      frames = (media.read_image(image) for image in media.list_images(folder))
      yield from frame_triplets(frames, folder.name, every, gap)

  return generate()


def read_dataset(name: str, root: str | os.PathLike, *, masks: str | os.PathLike | None = "auto",
                 every: int | None = None, sequences: Iterable[str] | None = None,
                 gap: int = 1) -> Iterator[Triplet]:
  """The reader for dataset `name` (one of `DATASETS`) on `root`; `every` None is the dataset's
  default (`VIDEO_EVERY`, `DAVIS_EVERY`); davis only: `sequences` (None: the held-out ones) and
  `gap`."""
  if name == "middlebury":
    return read_middlebury(root)
  if name == "ucf101":
    return read_ucf101(root, masks=masks)
  if name == "video":
    return read_video(root, every=every or VIDEO_EVERY)
  if name == "davis":
    return read_davis(root, sequences or DAVIS_HELD_OUT, every=every or DAVIS_EVERY, gap=gap)
  raise EvaluationError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


# ------------------------------------------------------------------------------------------------
# The evaluation loop


@dataclasses.dataclass
class ItemResult:
  """Scores of one item (metrics as in the module docstring) and the seconds its prediction took."""
  name: str
  psnr: float
  ssim: float
  seconds: float
  ssim_gaussian: float | None = None
  psnr_masked: float | None = None
  psnr_motion: dict[str, float | None] | None = None  # by MOTION_BUCKETS name

  def to_json(self) -> dict:
    out = {"psnr": self.psnr, "ssim": self.ssim, "seconds": self.seconds}
    if self.ssim_gaussian is not None:
      out["ssim_gaussian"] = self.ssim_gaussian
    if self.psnr_masked is not None:
      out["psnr_masked"] = self.psnr_masked
    if self.psnr_motion is not None:
      out["psnr_motion"] = self.psnr_motion
    return out


def _mean(values: Iterable[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.fmean(values) if values else None


@dataclasses.dataclass
class Report:
  """Per-item results of one evaluation and their means."""
  dataset: str
  model: str
  items: list[ItemResult]
  gaussian_ssim: bool = False
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def psnr(self) -> float | None:
    return _mean(item.psnr for item in self.items)

  @property
  def ssim(self) -> float | None:
    return _mean(item.ssim for item in self.items)

  @property
  def ssim_gaussian(self) -> float | None:
    return _mean(item.ssim_gaussian for item in self.items)

  @property
  def psnr_masked(self) -> float | None:
    """Mean over the items that have a masked PSNR (see the module docstring)."""
    return _mean(item.psnr_masked for item in self.items)

  @property
  def masked_count(self) -> int:
    return sum(item.psnr_masked is not None for item in self.items)

  @property
  def seconds_per_frame(self) -> float | None:
    return _mean(item.seconds for item in self.items)

  @property
  def psnr_motion(self) -> dict[str, float | None] | None:
    """Per motion bucket, the mean over the items with pixels in it; None without motion."""
    scored = [item.psnr_motion for item in self.items if item.psnr_motion is not None]
    if not scored:
      return None
    return {name: _mean(values.get(name) for values in scored) for name, _, _ in MOTION_BUCKETS}

  def to_json(self) -> dict:
    out = {"dataset": self.dataset, "model": self.model, "psnr": self.psnr, "ssim": self.ssim,
           "count": len(self.items), "seconds_per_frame": self.seconds_per_frame,
           "metrics": {"psnr": "RGB uint8 (rounded), data range 255, whole frame",
                       "ssim": SSIM_LABEL}}
    if self.gaussian_ssim:
      out["ssim_gaussian"] = self.ssim_gaussian
      out["metrics"]["ssim_gaussian"] = SSIM_GAUSSIAN_LABEL
    if self.masked_count:
      out["psnr_masked"] = self.psnr_masked
      out["masked_count"] = self.masked_count
      out["metrics"]["psnr_masked"] = ("PSNR inside the motion region (black pixels of "
                                        "motion_mask.png), DVF's formula")
    if self.psnr_motion is not None:
      out["psnr_motion"] = self.psnr_motion
      out["metrics"]["psnr_motion"] = ("PSNR over the pixels whose motion (larger |DIS flow| from "
                                       "the true middle frame to an input frame) is in each bucket")
    out.update(self.info)
    out["per_item"] = {item.name: item.to_json() for item in self.items}
    return out


Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate(triplets: Iterable[Triplet], predict: Predictor, *, dataset: str, model: str,
             gaussian_ssim: bool = False, warmup: bool = True, limit: int | None = None,
             on_item: Callable[[ItemResult], None] | None = None, info: dict | None = None,
             motion: bool = False) -> Report:
  """Scores `predict(first, second) -> (H, W, 3) uint8` on every triplet.

  Args:
    triplets: From a reader (`read_dataset`).
    predict: A model's predictor (e.g. an `Interpolator`) or one of `BASELINES`.
    dataset, model: Names recorded in the report.
    gaussian_ssim: Also compute the 11x11-Gaussian SSIM.
    warmup: Call `predict` once untimed on the first item of each frame size (jit compilation).
    limit: Stop after this many items.
    on_item: Called with each item's result as soon as it is scored (progress, tables).
    info: Extra JSON-serialisable facts for the report (padding, root, ...).
    motion: Also score PSNR by motion magnitude (`psnr_by_motion`; optical flow per item, not
      timed).
  """
  results: list[ItemResult] = []
  seen_shapes: set[tuple[int, ...]] = set()
  for triplet in triplets:
    if limit is not None and len(results) >= limit:
      break
    if triplet.first.shape != triplet.second.shape or triplet.first.shape != triplet.truth.shape:
      raise EvaluationError(f"{triplet.name}: frames differ in size ({triplet.first.shape}, "
                            f"{triplet.second.shape}, truth {triplet.truth.shape})")
    if warmup and triplet.first.shape not in seen_shapes:
      np.asarray(predict(triplet.first, triplet.second))
      seen_shapes.add(triplet.first.shape)
    start = time.perf_counter()
    prediction = np.asarray(predict(triplet.first, triplet.second))
    seconds = time.perf_counter() - start
    result = ItemResult(
        name=triplet.name, psnr=psnr(prediction, triplet.truth),
        ssim=ssim(prediction, triplet.truth), seconds=seconds,
        ssim_gaussian=ssim_gaussian(prediction, triplet.truth) if gaussian_ssim else None,
        psnr_masked=(None if triplet.mask is None
                     else psnr_masked(prediction, triplet.truth, triplet.mask)),
        psnr_motion=(psnr_by_motion(prediction, triplet.truth, motion_magnitude(
            triplet.first, triplet.second, triplet.truth)) if motion else None))
    results.append(result)
    if on_item is not None:
      on_item(result)
  if not results:
    raise EvaluationError(f"no items to evaluate in the {dataset} set")
  return Report(dataset=dataset, model=model, items=results, gaussian_ssim=gaussian_ssim,
                info=dict(info or {}))
