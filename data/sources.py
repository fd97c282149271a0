"""Find frame sequences under a folder and decode their frames.

A *sequence* is a run of consecutive frames of one shot (or of a clip that may contain cuts):
  - a DAVIS-layout folder `<root>/JPEGImages/<resolution>/<sequence>/NNNNN.jpg` gives one sequence
    per `<sequence>` folder; the rest of a DAVIS root (`Annotations/`, `ImageSets/`) is ignored;
  - any other folder holding at least three image files is a frame folder, ordered by natural sort
    (`2.png` before `10.png`);
  - a video file (`.mp4`, `.avi`, `.mov`, `.mkv`, `.webm`, `.m4v`) is one sequence.

Frames are RGB uint8 (H, W, 3). Frames taller than `max_height` are shrunk with area averaging
(keeps 720p clips at the scale of DAVIS 480p, where a 150x150 patch sees a comparable part of
the scene and flow magnitudes are comparable).

Folders named like the UCF101 interpolation test set (`ucf101_interp*`) are refused: that set is
for evaluation only and must never leak into training data.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Iterator

import cv2
import numpy as np

from .files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, natural_key

EVALUATION_ONLY = re.compile(r"^ucf101_interp", re.IGNORECASE)


class SourceError(ValueError):
  """A source folder that cannot be used: missing, empty, or evaluation-only."""


@dataclasses.dataclass(frozen=True)
class Sequence:
  """One sequence: `name` is its path relative to the source root, without a video suffix."""
  name: str
  path: str
  kind: str  # "frames" or "video"
  num_frames: int  # from the folder listing or the video header (an estimate for videos)
  # The frames [start, stop) of the folder or video that this sequence is (stop None: to the
  # end): a lone sequence is split in time into a training and a validation part.
  start: int = 0
  stop: int | None = None

  def part(self, start: int, stop: int | None) -> "Sequence":
    """Frames [start, stop) of this sequence, as a sequence named `name[start:stop]`."""
    total = self.num_frames if stop is None else stop
    return dataclasses.replace(self, name=f"{self.name}[{start}:{'' if stop is None else stop}]",
                               num_frames=max(0, total - start), start=self.start + start,
                               stop=None if stop is None else self.start + stop)

  @property
  def frame_paths(self) -> list[str]:
    if self.kind != "frames":
      raise ValueError(f"{self.name} is a {self.kind}, not a frame folder")
    return _image_files(pathlib.Path(self.path))


_PART_NAME = re.compile(r"^(?P<base>.+)\[(?P<start>\d+):(?P<stop>\d*)\]$")


def find_sequence(by_name: dict[str, Sequence], name: str) -> Sequence | None:
  """The sequence called `name` in `by_name`, including a part such as `clip[68:]` of one."""
  if name in by_name:
    return by_name[name]
  match = _PART_NAME.match(name)
  if match is None or match["base"] not in by_name:
    return None
  return by_name[match["base"]].part(int(match["start"]),
                                     int(match["stop"]) if match["stop"] else None)


def _image_files(folder: pathlib.Path) -> list[str]:
  files = [entry for entry in os.scandir(folder)
           if entry.is_file() and pathlib.Path(entry.name).suffix.lower() in IMAGE_SUFFIXES]
  return [entry.path for entry in sorted(files, key=lambda e: natural_key(e.name))]


def _video_frame_count(path: str) -> int:
  capture = cv2.VideoCapture(path)
  try:
    return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
  finally:
    capture.release()


def _refuse_evaluation_only(path: pathlib.Path) -> None:
  for part in path.parts:
    if EVALUATION_ONLY.match(part):
      raise SourceError(f"refusing {path}: '{part}' is an evaluation set and must never be used "
                        "as training data")


def discover_sequences(root: str | os.PathLike, *, davis_resolution: str = "480p"
                       ) -> list[Sequence]:
  """All sequences under `root` (symlinks followed), sorted by name.

  Raises SourceError if `root` is missing, evaluation-only, or holds no sequence.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise SourceError(f"source folder not found: {root}")
  _refuse_evaluation_only(root.resolve())
  sequences = []
  for folder, subdirs, files in os.walk(root, followlinks=True):
    folder_path = pathlib.Path(folder)
    subdirs.sort()
    # Evaluation-only folders below the root are skipped (the root itself was checked above).
    subdirs[:] = [d for d in subdirs if not EVALUATION_ONLY.match(d) and not d.startswith(".")]
    if "JPEGImages" in subdirs:  # a DAVIS root: only JPEGImages/<resolution>/<sequence>/
      subdirs.clear()
      davis = folder_path / "JPEGImages" / davis_resolution
      if davis.is_dir():
        for seq_dir in sorted(p for p in davis.iterdir() if p.is_dir()):
          frames = _image_files(seq_dir)
          if len(frames) >= 3:
            sequences.append(Sequence(seq_dir.relative_to(root).as_posix(), str(seq_dir),
                                      "frames", len(frames)))
      continue
    images = [f for f in files if pathlib.Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if len(images) >= 3:
      name = folder_path.relative_to(root).as_posix()
      sequences.append(Sequence(root.name if name == "." else name, str(folder_path), "frames",
                                len(images)))
    for name in sorted(files):
      if pathlib.Path(name).suffix.lower() in VIDEO_SUFFIXES:
        path = folder_path / name
        sequences.append(Sequence(path.relative_to(root).with_suffix("").as_posix(), str(path),
                                  "video", _video_frame_count(str(path))))
  if not sequences:
    raise SourceError(f"no frame sequences found in {root} (expected a DAVIS layout "
                      "JPEGImages/<resolution>/<sequence>/, folders of >= 3 images, or videos)")
  return sorted(sequences, key=lambda s: s.name)


def resize_to_max_height(frame: np.ndarray, max_height: int | None) -> np.ndarray:
  if max_height is None or frame.shape[0] <= max_height:
    return frame
  width = max(1, round(frame.shape[1] * max_height / frame.shape[0]))
  return cv2.resize(frame, (width, max_height), interpolation=cv2.INTER_AREA)


def iter_frames(sequence: Sequence, *, max_height: int | None = None) -> Iterator[np.ndarray]:
  """Yields the sequence's frames [start, stop) in order as RGB uint8 (H, W, 3).

  Raises OSError on a file or video that cannot be decoded.
  """
  frames = _iter_all_frames(sequence, max_height)
  for index, frame in enumerate(frames):
    if sequence.stop is not None and index >= sequence.stop:
      frames.close()  # releases the video
      return
    if index >= sequence.start:
      yield frame


def _iter_all_frames(sequence: Sequence, max_height: int | None) -> Iterator[np.ndarray]:
  if sequence.kind == "frames":
    for path in sequence.frame_paths:
      bgr = cv2.imread(path, cv2.IMREAD_COLOR)
      if bgr is None:
        raise OSError(f"cannot decode image {path}")
      yield resize_to_max_height(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_height)
  elif sequence.kind == "video":
    capture = cv2.VideoCapture(sequence.path)
    if not capture.isOpened():
      raise OSError(f"cannot open video {sequence.path}")
    try:
      while True:
        ok, bgr = capture.read()
        if not ok:
          break
        yield resize_to_max_height(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_height)
    finally:
      capture.release()
  else:
    raise ValueError(f"unknown sequence kind {sequence.kind!r}")
