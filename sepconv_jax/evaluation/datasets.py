"""The standard frame-interpolation sets as streams of triplets.

Conventions
  Frames    (H, W, 3) uint8 RGB, as `sepconv_jax.inference.media.read_image` returns them and
            `sepconv_jax.Interpolator` takes and gives them.
  Items     The readers yield `Triplet(name, first, second, truth, mask)`: the two input frames,
            the true middle frame and, for UCF101 with its motion masks, the (H, W) bool motion
            region (else None). Each reader checks its root and lists its items when called (so that a
            wrong path fails before a model loads) and decodes the frames lazily, one item at a time.
  Masks     The UCF101 motion masks (`motion_mask.png`, 0/255) mark the moving pixels **black**
            (0): over the 379 triplets the mean |frame_00 - frame_02| is 26.3 levels on the black
            pixels and 5.6 on the white ones (white covers 85% of a frame on average, and the
            black blobs sit on the moving hands, drumsticks, ...). The reader therefore gives
            `mask = (motion_mask.png < 128)`, True on motion. (DVF's script weights by the file's
            values / 255, i.e. the white pixels, with its copy of the masks; which polarity the
            published "motion" numbers used is not settled here.)

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

NumPy and OpenCV (through `sepconv_jax.inference.media`); PyAV (through
`sepconv_jax.inference.video`) only for videos. No jax.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from sepconv_data.files import VIDEO_SUFFIXES, natural_key
from sepconv_jax.inference import media

DATASETS = ("middlebury", "ucf101", "video", "davis")
VIDEO_EVERY = 30
DAVIS_EVERY = 10
# The DAVIS sequences the training cache holds out for validation (`sepconv prepare
# --validation-sequences`, see the model card): never trained on by the shipped models.
DAVIS_HELD_OUT = ("cows", "drift-chicane")

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
# Readers


def _check_root(root: str | os.PathLike, *, what: str, directory: bool = True) -> pathlib.Path:
  path = pathlib.Path(root)
  if not path.exists():
    raise EvaluationError(f"{what} root {os.fspath(root)} does not exist")
  if directory and not path.is_dir():
    raise EvaluationError(f"{what} root {os.fspath(root)} is not a directory")
  return path


def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
  try:
    entries = [entry for entry in path.iterdir()
               if entry.is_dir() and not entry.name.startswith(".")]
  except OSError as error:
    raise EvaluationError(f"{os.fspath(path)}: cannot list ({error.strerror or error})") from None
  return sorted(entries, key=lambda entry: natural_key(entry.name))


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
  from sepconv_jax.inference import video  # PyAV: only needed here  # pylint: disable=import-outside-toplevel
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
                      key=lambda entry: natural_key(entry.name))
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
