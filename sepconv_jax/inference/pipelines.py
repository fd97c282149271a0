"""The pipelines behind `sepconv interpolate`: a pair, a folder of frames or a video -> output files.

Each pipeline takes an `Interpolator` and paths, returns a `Summary`, and writes its output under a
temporary name next to the target that is renamed into place only when everything succeeded: an
error or an interrupt leaves no partial output behind.

Timing of the output (factor F, input frames 0..N-1 at times t[0..N-1]):
  - every input frame is kept, unchanged;
  - between frames i and i+1, F-1 new frames at t[i] + j/F * (t[i+1] - t[i]), j = 1..F-1;
  - at a scene cut (`sepconv_jax.inference.scene`: the pair's colour histograms differ by more than the
    threshold) the new frames are copies of frame i instead: the old shot holds until the new one
    starts at its original time, and nothing is morphed across the cut;
  - pairs and folders: F*(N-1)+1 frames (the first and last input frames bound the output);
  - videos: F*N frames, the last input frame followed by F-1 copies of itself spaced like the
    frames before it, so that the output has exactly F times the input's frames, F times its
    frame rate (the stream's average rate, an exact fraction) and the same duration (the last
    frame is shown for as long as in the input), and audio copied as is stays in sync to the end.
    Timestamps: each output frame goes to its exact time above, except that a time within one
    input time-base tick of the output grid (multiples of 1 / (F x the input's average rate))
    goes onto the grid: a constant-rate input (even one whose container rounds times, like
    Matroska's milliseconds) gives exactly the grid, so the output rate is exactly F times the
    input's, while a variable-rate input keeps every input frame's timestamp and puts the new
    frames halfway (k/F of the way) between their neighbours'. The last frame is held until the
    video stream's declared end (else for the average frame interval), so the duration, and with
    it the sync of the copied audio, is kept. The output time base divides both the grid and the
    input's time base / F.

Errors the user can fix (missing, unreadable or mismatched inputs, unwritable outputs, a missing
model) raise `MediaError` or `CheckpointError`; `run` turns them into one `error:` line on stderr
and exit status 1.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import tqdm

from pallas_kernels.allocator import keep_freed_memory
from sepconv_jax.inference import media, scene, video
from sepconv_jax.network.checkpoint import CheckpointError
from sepconv_jax.inference.interpolator import (DEFAULT_MAX_UNTILED_PIXELS, FACTORS, Interpolator,
                                      TileSettings)
from sepconv_jax.inference.media import MediaError

# Automatic batch size: consecutive pairs per network call while the batch stays within the
# untiled pixel budget (one 1280x720 frame), at most this many.
MAX_AUTO_BATCH = 8


class Step(NamedTuple):
  """One output frame. Its time is t[index] + fraction / factor * (t[index + 1] - t[index])."""
  frame: np.ndarray
  kind: str  # "input" (kept as is), "new" (interpolated) or "repeat" (a copy, at a scene cut)
  index: int  # the input frame at or before this output frame
  fraction: int  # 0 for input frames, 1..factor-1 between index and index + 1


@dataclasses.dataclass
class Summary:
  """What a pipeline wrote, for the closing line."""
  output: pathlib.Path
  inputs: int = 0
  interpolated: int = 0
  repeated: int = 0  # copies at scene cuts
  held: int = 0  # copies of a video's last frame (see the module docstring)
  cuts: int = 0
  seconds: float = 0.0
  rate: fractions.Fraction | None = None  # output frame rate (videos)
  compute: str = ""  # how the network ran (`Interpolator.describe_compute`)
  warning: str = ""  # e.g. a truncated input written as far as it decodes

  @property
  def written(self) -> int:
    return self.inputs + self.interpolated + self.repeated + self.held

  def count(self, step: Step) -> None:
    if step.kind == "input":
      self.inputs += 1
    elif step.kind == "new":
      self.interpolated += 1
    else:
      self.repeated += 1
      self.cuts += step.fraction == 1

  def __str__(self) -> str:
    parts = [f"{self.inputs} input"] if self.inputs else []
    parts.append(f"{self.interpolated} interpolated")
    if self.repeated:
      parts.append(f"{self.repeated} repeated at cuts")
    if self.held:
      parts.append(f"{self.held} holding the last frame")
    line = (f"wrote {self.output}: {self.written} frame{'s' * (self.written != 1)} "
            f"({', '.join(parts)}); "
            f"{self.cuts} scene cut{'s' * (self.cuts != 1)}")
    if self.rate is not None:
      line += f"; {float(self.rate):.6g} fps ({self.rate})"
    per_frame = self.seconds / self.interpolated if self.interpolated else 0.0
    line += (f"; {self.seconds:.1f} s, {self.written / max(self.seconds, 1e-9):.2f} frames/s "
             f"written, {per_frame:.3f} s per interpolated frame")
    if self.compute:
      line += f"; network: {self.compute}"
    if self.warning:
      line += f"; warning: {self.warning}"
    return line


# ------------------------------------------------------------------------------------------------
# The core: a stream of frames in, a stream of output frames with their places in time out.


def auto_batch_size(interpolator: Interpolator, height: int, width: int) -> int:
  """Pairs per network call: as many as fit the untiled pixel budget, 1 for tiled frames."""
  budget = interpolator.max_untiled_pixels
  budget = DEFAULT_MAX_UNTILED_PIXELS if budget is None else budget
  return max(1, min(MAX_AUTO_BATCH, budget // (height * width)))


def _in_betweens(interpolator: Interpolator, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                 factor: int, batch_size: int) -> list[list[np.ndarray]]:
  """The factor-1 frames between each pair, batch_size pairs per network call."""
  results: list[list[np.ndarray]] = []
  for start in range(0, len(pairs), batch_size):
    chunk = list(pairs[start:start + batch_size])
    used = len(chunk)
    # Few batch shapes (one compilation each): a short chunk is padded with repeats up to the next
    # power of two only (at most batch_size), so that at most log2(batch_size) + 1 shapes are
    # compiled and a short input never computes a whole batch of padding.
    shape = min(batch_size, 1 << (used - 1).bit_length())
    chunk += [chunk[-1]] * (shape - used)
    first = np.stack([pair[0] for pair in chunk])
    second = np.stack([pair[1] for pair in chunk])
    sixteen = first.dtype == np.uint16  # 16-bit frames: through the network as float, back
    if sixteen:
      first, second = (a.astype(np.float32) / 65535.0 for a in (first, second))
    frames = interpolator.multiply(first, second, factor)  # factor-1 arrays of (B, H, W, 3)
    if sixteen:
      frames = [np.round(np.clip(f, 0.0, 1.0) * 65535.0).astype(np.uint16) for f in frames]
    results += [[np.asarray(frame[b]) for frame in frames] for b in range(used)]
  return results


def _as_uint8(frame: np.ndarray) -> np.ndarray:
  """uint8 as is; uint16 rounded to 8 bits (the scene-cut test's histograms are 8-bit)."""
  if frame.dtype == np.uint16:
    return ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)
  return frame


def interpolate_sequence(interpolator: Interpolator, frames: Iterable[np.ndarray], *,
                         factor: int = 2, threshold: float = scene.DEFAULT_THRESHOLD,
                         batch_size: int = 1) -> Iterator[Step]:
  """Yields the output frames for a sequence of (H, W, 3) uint8 (or uint16) RGB frames, in time
  order.

  Each input frame, then the factor-1 frames between it and the next (interpolated, or copies of
  it at a scene cut); the last input frame last. Frames are consumed lazily: at most about
  `batch_size` pairs are held at a time.
  """
  if factor not in FACTORS:
    raise ValueError(f"factor={factor} must be one of {FACTORS}")
  pending: list[tuple[int, np.ndarray, np.ndarray, bool]] = []  # (index, first, second, is_cut)

  def flush() -> Iterator[Step]:
    morphed = [(first, second) for _, first, second, cut in pending if not cut]
    results = iter(_in_betweens(interpolator, morphed, factor, batch_size))
    for index, first, _, cut in pending:
      yield Step(first, "input", index, 0)
      middles = [first] * (factor - 1) if cut else next(results)
      for fraction, frame in enumerate(middles, start=1):
        yield Step(frame, "repeat" if cut else "new", index, fraction)
    pending.clear()

  previous = previous_histogram = None
  index = -1
  for index, frame in enumerate(frames):
    histogram = scene.joint_histogram(_as_uint8(frame))
    if previous is not None:
      cut = scene.histogram_distance(previous_histogram, histogram) > threshold
      pending.append((index - 1, previous, frame, cut))
      morphs = sum(not item[3] for item in pending)
      if morphs >= batch_size or len(pending) >= 4 * batch_size:
        yield from flush()
    previous, previous_histogram = frame, histogram
  yield from flush()
  if previous is not None:
    yield Step(previous, "input", index, 0)


# Without a terminal (a log file, nohup, a job scheduler), one progress line this often.
LOG_PROGRESS_EVERY_S = 10.0


class Progress:
  """Input frames read by a long job: tqdm's bar on a terminal; elsewhere a plain line on stderr
  every `every_s` seconds (frames done of the total, input frames per second, time left), so
  that a job's log shows it is alive. Neither when `enabled` is False. A context manager."""

  def __init__(self, total: int | None, description: str, enabled: bool, *,
               every_s: float = LOG_PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic,
               stream=None):
    # disable=None: a bar only on a terminal; the summary line is printed either way.
    self.bar = tqdm.tqdm(total=total, desc=description, unit="frame", file=sys.stderr,
                         leave=False, dynamic_ncols=True, disable=None if enabled else True)
    self._lines = enabled and self.bar.disable
    self._total, self._description, self._every_s = total, description, every_s
    self._clock, self._stream = clock, stream
    self._start = self._last = clock()
    self.done = 0

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.bar.close()

  def update(self, count: int = 1) -> None:
    self.bar.update(count)
    self.done += count
    now = self._clock()
    if self._lines and now - self._last >= self._every_s:
      self._last = now
      print(self.line(now), file=self._stream or sys.stderr, flush=True)

  def line(self, now: float) -> str:
    rate = self.done / max(now - self._start, 1e-9)
    of = f"/{self._total}" if self._total else ""
    left = (f", about {_duration((self._total - self.done) / rate)} left"
            if self._total and rate > 0 and self.done <= self._total else "")
    return f"{self._description}: {self.done}{of} input frames, {rate:.2f} frames/s{left}"


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min" if hours else (
      f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s")


def _counted(frames: Iterable, progress: Progress) -> Iterator:
  for item in frames:
    yield item
    progress.update(1)


# ------------------------------------------------------------------------------------------------
# Pipelines.


def pair_output_paths(out: str | os.PathLike, factor: int) -> list[pathlib.Path]:
  """OUT for factor 2; OUT's stem with _1 .. _{factor-1} (in time order) for larger factors."""
  out = pathlib.Path(out)
  if factor == 2:
    return [out]
  return [out.with_name(f"{out.stem}_{j}{out.suffix}") for j in range(1, factor)]


def check_pair(first, second, out, *, factor: int, overwrite: bool = False) -> None:
  """The cheap checks of `interpolate_pair`, before any model is loaded."""
  for path in (first, second):
    if not pathlib.Path(path).is_file():
      raise MediaError(f"{os.fspath(path)}: file not found" if not pathlib.Path(path).exists()
                       else f"{os.fspath(path)}: not a file")
  for path in pair_output_paths(out, factor):
    media.check_output_file(path, overwrite=overwrite, inputs=(first, second))
  media.check_image_suffix(out)


# Image formats whose 16-bit frames stay 16-bit (`interpolate_pair`, `interpolate_folder`).
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def _widened(frame: np.ndarray) -> np.ndarray:
  """uint16 as is; uint8 widened to uint16 (x * 257: 255 -> 65535), for mixed-depth inputs."""
  return frame.astype(np.uint16) * 257 if frame.dtype == np.uint8 else frame


def _same_size(frame: np.ndarray, reference: np.ndarray, name: str, reference_name: str) -> None:
  if frame.shape != reference.shape:
    (h0, w0), (h1, w1) = reference.shape[:2], frame.shape[:2]
    raise MediaError(f"frames differ in size: {reference_name} is {w0}x{h0}, {name} is {w1}x{h1}")


def interpolate_pair(interpolator: Interpolator, first, second, out, *, factor: int = 2,
                     threshold: float = scene.DEFAULT_THRESHOLD, overwrite: bool = False,
                     checked: bool = False) -> Summary:
  """Writes the frame(s) between two images: OUT, or OUT_1 .. OUT_{factor-1} (see above).
  `checked`: the caller has run `check_pair` with these arguments (before loading a model)."""
  start = time.perf_counter()
  if not checked:
    check_pair(first, second, out, factor=factor, overwrite=overwrite)
  # 16-bit inputs give 16-bit PNG/TIFF outputs (8-bit elsewhere).
  keep_16bit = pathlib.Path(out).suffix.lower() in SIXTEEN_BIT_SUFFIXES
  frame0, frame1 = (media.read_image(path, keep_16bit=keep_16bit) for path in (first, second))
  if np.uint16 in (frame0.dtype, frame1.dtype):
    frame0, frame1 = _widened(frame0), _widened(frame1)
  _same_size(frame1, frame0, os.fspath(second), os.fspath(first))
  summary = Summary(pathlib.Path(out))
  middles = []
  for step in interpolate_sequence(interpolator, [frame0, frame1], factor=factor,
                                   threshold=threshold):
    if step.kind != "input":
      summary.count(step)
      middles.append(step.frame)
  media.write_images(middles, pair_output_paths(out, factor))
  if factor > 2:
    summary.output = pathlib.Path(out).with_name(f"{pathlib.Path(out).stem}_{{1..{factor - 1}}}"
                                                 f"{pathlib.Path(out).suffix}")
  summary.seconds = time.perf_counter() - start
  return summary


def check_folder(source, out) -> list[pathlib.Path]:
  """The cheap checks of `interpolate_folder`; returns the input frames in order."""
  paths = media.list_images(source)
  if len(paths) < 2:
    raise MediaError(f"{os.fspath(source)}: found {len(paths)} image file(s) "
                     f"({', '.join(media.IMAGE_SUFFIXES)}); need at least 2")
  out = pathlib.Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise MediaError(f"output {os.fspath(out)} must be a new or empty directory")
  media.check_writable_dir(out.absolute().parent, what=os.fspath(out))
  return paths


def interpolate_folder(interpolator: Interpolator, source, out, *, factor: int = 2,
                       threshold: float = scene.DEFAULT_THRESHOLD, batch_size: int | None = None,
                       progress: bool = True) -> Summary:
  """Reads the images of `source` in natural order ("2" before "10") and writes the output
  sequence into the new directory `out` as 000000.png, 000001.png, ... (the input's format).
  `source` is a folder, or the frame paths `check_folder(folder, out)` returned."""
  start = time.perf_counter()
  paths = list(source) if isinstance(source, (list, tuple)) else check_folder(source, out)
  out = pathlib.Path(out)
  suffix = paths[0].suffix.lower()
  total = factor * (len(paths) - 1) + 1
  width = max(6, len(str(total - 1)))
  # 16-bit PNG/TIFF sequences stay 16-bit (frames keep their depth; 8-bit ones among them are
  # widened); everything else is 8-bit.
  first = media.read_image(paths[0], keep_16bit=suffix in SIXTEEN_BIT_SUFFIXES)
  sixteen = first.dtype == np.uint16
  if batch_size is None:
    batch_size = auto_batch_size(interpolator, *first.shape[:2])

  def frames() -> Iterator[np.ndarray]:
    yield first
    for path in paths[1:]:
      frame = media.read_image(path, keep_16bit=sixteen)
      frame = _widened(frame) if sixteen else frame
      _same_size(frame, first, path.name, paths[0].name)
      yield frame

  summary = Summary(out)
  media.remove_stale_partials(out, directory=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=media.partial_prefix(out, directory=True),
                                          suffix=".partial", dir=out.absolute().parent))
  try:
    with Progress(len(paths), out.name, progress) as bar:
      for number, step in enumerate(interpolate_sequence(
          interpolator, _counted(frames(), bar), factor=factor, threshold=threshold,
          batch_size=batch_size)):
        (staging / f"{number:0{width}d}{suffix}").write_bytes(
            media.encode_image(step.frame, suffix))
        summary.count(step)
    media.default_permissions(staging, directory=True)
    if out.exists():
      out.rmdir()  # checked empty above
    os.replace(staging, out)
  except OSError as error:
    raise MediaError(f"cannot write {os.fspath(out)}: {error.strerror or error}") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  summary.seconds = time.perf_counter() - start
  return summary


def _output_time_base(grid: fractions.Fraction, fine: fractions.Fraction) -> fractions.Fraction:
  """The coarsest time base in which both the output grid and `fine` (the input's time base / F)
  are whole ticks; the grid itself if that would overflow a container's 32-bit time scale."""
  scale = math.lcm(grid.denominator, fine.denominator)
  return fractions.Fraction(1, scale) if scale < 2**31 else grid


def check_video(source, out, *, overwrite: bool = False) -> video.VideoReader:
  """The cheap checks of `interpolate_video`: OUT can be written and the input opens as a video,
  which is returned open (hand it to `interpolate_video`, which closes it)."""
  media.check_output_file(out, overwrite=overwrite, inputs=(source,))
  video.check_video_suffix(out)
  return video.VideoReader(source)


def interpolate_video(interpolator: Interpolator, source, out, *, factor: int = 2,
                      threshold: float = scene.DEFAULT_THRESHOLD, batch_size: int | None = None,
                      overwrite: bool = False, progress: bool = True,
                      allow_truncated: bool = False, crf: int = video.H264_CRF,
                      lossless: bool = False) -> Summary:
  """Writes `source` at `factor` times its frame rate to `out`, audio copied (see above).
  `source` is a video file, or the reader `check_video(file, out)` returned. A file that decodes
  to fewer frames than it declares (cut short, damaged) is an error, and nothing is written,
  unless `allow_truncated`: then the decodable part is written and the summary says so. `crf`
  and `lossless` are the encoder's settings (`video.VideoWriter`)."""
  start = time.perf_counter()
  opened = (source if isinstance(source, video.VideoReader)
            else check_video(source, out, overwrite=overwrite))
  out = pathlib.Path(out)
  summary = Summary(out)
  with opened as reader, media.atomic_outputs([out]) as (temporary,):
    info = reader.info
    # Rates computed from odd timestamps can have huge terms; every common rate survives this.
    summary.rate = info.average_rate.limit_denominator(1001) * factor
    if batch_size is None:
      batch_size = auto_batch_size(interpolator, info.height, info.width)
    times: dict[int, int] = {}  # input index -> pts, for the frames still in flight
    last_pts = None  # in output time base units
    grid = 1 / summary.rate  # seconds between output frames of a constant-rate input
    time_base = _output_time_base(grid, info.time_base / factor)

    def tick(index: int, offset: fractions.Fraction) -> int:
      """The output pts of the time `offset` input intervals after input frame `index`."""
      nonlocal last_pts
      start = times[index]
      seconds = (start + offset * (times[index + 1] - start) if offset else start) * info.time_base
      on_grid = round(seconds / grid) * grid
      if abs(seconds - on_grid) <= info.time_base:  # a constant rate's rounding: the grid
        seconds = on_grid
      pts = round(seconds / time_base)
      if last_pts is not None and pts <= last_pts:
        pts = last_pts + 1  # input frames closer than an output tick: keep them in order
      last_pts = pts
      return pts

    with video.VideoWriter(temporary, info, rate=summary.rate, time_base=time_base,
                           audio_templates=reader.audio_streams, crf=crf,
                           lossless=lossless) as writer:

      decoded = {}  # input index -> the decoder's frame, for the frames still in flight

      def frames() -> Iterator[np.ndarray]:
        for index, (rgb, pts, frame) in enumerate(
            reader.frames(audio_sink=writer.mux_audio, with_decoded=True)):
          times[index], decoded[index] = pts, frame
          yield rgb

      last = None
      with Progress(info.frame_count, out.name, progress) as bar:
        for step in interpolate_sequence(interpolator, _counted(frames(), bar), factor=factor,
                                         threshold=threshold, batch_size=batch_size):
          # Kept and repeated frames are input frames: the writer can encode their decoded YUV.
          writer.write(step.frame, tick(step.index, fractions.Fraction(step.fraction, factor)),
                       decoded=None if step.kind == "new" else decoded[step.index])
          summary.count(step)
          if step.fraction == 0:
            for old in [key for key in times if key < step.index - 1]:
              del times[old], decoded[old]
          last = step
      if summary.inputs < 2:
        raise MediaError(f"{os.fspath(reader.path)}: has {summary.inputs} decodable frame(s); "
                         "need at least 2")
      truncation = reader.truncation()
      if truncation and not allow_truncated:
        raise MediaError(f"{truncation}; --allow-truncated writes the frames that decode")
      notes = [truncation] if truncation else []
      if info.bit_depth > writer.bit_depth:  # --lossless (8-bit RGB) or no libx264
        notes.append(f"the input is {info.bit_depth}-bit, the output {writer.bit_depth}-bit")
      summary.warning = "; ".join(notes)
      # Hold the last frame until the stream's declared end, else (Matroska, or a declared end
      # before the last frame, as B-frame edit lists give variable-rate MP4s) for the average
      # frame interval, in factor steps.
      end = reader.declared_end_pts()
      times[last.index + 1] = (end if end is not None and end > times[last.index] else
                               times[last.index] + 1 / (info.average_rate * info.time_base))
      for fraction in range(1, factor):
        writer.write(last.frame, tick(last.index, fractions.Fraction(fraction, factor)),
                     decoded=decoded[last.index])
        summary.held += 1
  summary.seconds = time.perf_counter() - start
  return summary


# ------------------------------------------------------------------------------------------------
# The command line (argument parsing lives in sepconv_jax.commands.interpolate).


def load_interpolator(model: str | os.PathLike | None, *, padding: str,
                      max_untiled_pixels: int | None = None,
                      tile_size: int | None = None, ensemble: bool = False,
                      align: float | None = None, consensus: float | None = None,
                      precision: str | None = None) -> Interpolator:
  """The checkpoint at `model`, or the project's default model when `model` is None;
  `align` the pre-alignment strength and `consensus` the consensus weight (`Interpolator`; None:
  the checkpoint's own), `precision` None (or "auto") the backend's default."""
  kwargs = {"ensemble": ensemble, "align": align, "consensus": consensus,
            "precision": None if precision == "auto" else precision}
  if max_untiled_pixels is not None:
    kwargs["max_untiled_pixels"] = max_untiled_pixels
  if tile_size is not None:
    overlap = min(TileSettings.overlap, tile_size // 4)
    kwargs["tiles"] = TileSettings(size=tile_size, overlap=overlap)
  if model is None:
    try:
      return Interpolator.default(padding=padding, **kwargs)
    except FileNotFoundError:
      raise CheckpointError("no default model is installed yet; pass --model CHECKPOINT (a "
                            "directory written by sepconv_jax.save_model or "
                            "sepconv convert)") from None
  if not pathlib.Path(model).is_dir():
    raise CheckpointError(f"--model {os.fspath(model)}: no checkpoint directory there")
  try:
    return Interpolator.from_checkpoint(model, padding=padding, **kwargs)
  except (KeyError, TypeError, ValueError) as error:  # metadata of an unknown shape
    raise CheckpointError(f"--model {os.fspath(model)}: not a usable checkpoint "
                          f"({type(error).__name__}: {error})") from None


def _is_out_of_memory(error: BaseException) -> bool:
  return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


class Terminated(KeyboardInterrupt):
  """SIGTERM, turned into an interrupt so that it unwinds (and cleans up) like Ctrl-C."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def run(args) -> int:
  """Runs the pipeline chosen by the parsed arguments of `sepconv interpolate`; returns the status.

  Problems with the user's files, paths or model print one `error:` line on stderr (exit 1); an
  interrupt exits with 130, SIGTERM (which stops the work the same way) with 143. Either way no
  partial output is left behind.
  """
  common = dict(factor=args.factor, threshold=args.scene_threshold)
  keep_freed_memory()  # every frame reuses the previous frame's buffers (pallas_kernels.allocator)
  # Signal handlers can only be set from the main thread (the command line); elsewhere SIGTERM
  # keeps its default.
  main_thread = threading.current_thread() is threading.main_thread()
  previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
  try:
    return _run(args, common)
  except Terminated:
    print("error: terminated", file=sys.stderr)
    return 143
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return 130
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous_handler)


def _run(args, common: dict) -> int:
  reader = None
  try:
    # The cheap checks first (once: their results go to the pipeline), so that a typo fails
    # before the model loads.
    if args.pair:
      check_pair(*args.pair, args.out, factor=args.factor, overwrite=args.overwrite)
    elif args.frames:
      frame_paths = check_folder(args.frames, args.out)
    else:
      reader = check_video(args.video, args.out, overwrite=args.overwrite)
    interpolator = load_interpolator(args.model, padding=args.padding,
                                     max_untiled_pixels=args.max_untiled_pixels,
                                     tile_size=args.tile_size, ensemble=args.ensemble,
                                     align=args.align, consensus=args.consensus,
                                     precision=args.precision)
    if args.pair:
      summary = interpolate_pair(interpolator, *args.pair, args.out, overwrite=args.overwrite,
                                 checked=True, **common)
    elif args.frames:
      summary = interpolate_folder(interpolator, frame_paths, args.out,
                                   batch_size=args.batch_size, **common)
    else:
      summary = interpolate_video(interpolator, reader, args.out, batch_size=args.batch_size,
                                  overwrite=args.overwrite, allow_truncated=args.allow_truncated,
                                  crf=args.crf, lossless=args.lossless, **common)
  except (MediaError, CheckpointError) as error:
    print(f"error: {media.one_line(error)}", file=sys.stderr)
    return 1
  except Exception as error:
    if not _is_out_of_memory(error):
      raise  # a bug: keep the traceback
    print("error: out of memory; lower --max-untiled-pixels (frames above it are tiled) or "
          "--tile-size", file=sys.stderr)
    return 1
  finally:
    if reader is not None:
      reader.close()  # a no-op once interpolate_video has closed it
  summary.compute = interpolator.describe_compute() + interpolator.describe_alignment()
  print(summary)
  return 0
