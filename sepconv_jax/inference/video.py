"""Reading and writing videos with PyAV (FFmpeg bundled in the wheel): frames as RGB uint8 arrays.

Conventions
  Frames      (H, W, 3) uint8 RGB, decoded one at a time (a video is never held in memory).
  Time        Every frame carries its presentation timestamp (PTS) as an integer in its stream's
              time base. The writer takes PTS in a time base given up front, so that a caller can
              place frames exactly (`sepconv_jax.inference.pipelines` uses one output frame as the unit).
  Colour      YUV -> RGB with the input's colour matrix and range (BT.601 when untagged, as
              FFmpeg assumes), and back to YUV with the same matrix; the output is tagged with
              the input's matrix, range, primaries and transfer, so colours survive the round trip.
              Both conversions use swscale's accurate rounding and full chroma interpolation:
              its default fast path darkens every decoded frame by about 1.1 levels of 255
              (measured on sam2_01_dog, BT.709), which a round trip would then add to every kept
              frame; with these flags the bias is under 0.01 levels at the same speed.
              Kept frames skip the round trip altogether where they can: the writer encodes the
              decoded YUV frame itself when its pixel format is the output's (8-bit 4:2:0 into
              8-bit 4:2:0, 10-bit into 10-bit), so a kept frame loses only what the encoder
              loses, as in a plain re-encode; RGB -> YUV conversion (a second chroma
              subsampling, which costs up to twice the error on saturated edges) is for the
              interpolated frames.
  Video out   H.264 (libx264, CRF 18, preset "medium", yuv420p; yuv444p when a side is odd, which
              4:2:0 cannot hold) when the bundled FFmpeg has libx264, else MPEG-4 Part 2 at a fixed
              high quality. Containers: .mp4, .m4v, .mov, .mkv. Side data kept: the display
              matrix (rotation, flips) and HDR10's static metadata (mastering display colour
              volume, content light level), written as H.264 SEI.
  Audio out   Every audio stream of the input is copied packet by packet (no re-encoding), with
              its timestamps rescaled to the output stream's time base by the muxer. Other
              streams (subtitles, timecode data) are not copied.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
import pathlib
from typing import Callable, Iterator

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from sepconv_jax.inference.media import MediaError, one_line

# The containers written (H.264 in MP4/QuickTime/Matroska); any of sepconv_data.files's
# VIDEO_SUFFIXES is read.
WRITABLE_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
H264_CRF = 18
H264_PRESET = "medium"
MPEG4_QSCALE = 2  # 1 (best) .. 31; only when libx264 is missing from the FFmpeg build

_FALLBACK_COLORSPACE = av.video.reformatter.Colorspace.ITU601  # FFmpeg's assumption when untagged
_Interpolation = av.video.reformatter.Interpolation
_SCALER_FLAGS = (_Interpolation.BILINEAR | _Interpolation.ACCURATE_RND
                 | _Interpolation.FULL_CHR_H_INT)
# Not for 10-bit YUV to 16-bit RGB: there this FFmpeg's full-chroma path is broken (red and green
# come out 41 levels of 255 off on a plain gradient; measured with PyAV 18.1's bundled FFmpeg).
_SCALER_FLAGS_16 = _Interpolation.BILINEAR | _Interpolation.ACCURATE_RND


@dataclasses.dataclass(frozen=True)
class ColourTags:
  """The colour description of a video stream (FFmpeg's enum values; 2 means unspecified)."""
  colorspace: int = 2
  color_range: int = 0
  color_primaries: int = 2
  color_trc: int = 2

  @property
  def matrix(self):
    """The YUV<->RGB matrix to convert with (swscale knows fewer matrices than streams name)."""
    try:
      return av.video.reformatter.Colorspace(self.colorspace)
    except ValueError:
      return _FALLBACK_COLORSPACE

  @property
  def range(self):
    return av.video.reformatter.ColorRange(self.color_range if self.color_range in (1, 2) else 1)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What the writer needs to know about the input's video stream."""
  width: int
  height: int
  average_rate: fractions.Fraction  # frames per second, exact (e.g. 30000/1001)
  time_base: fractions.Fraction
  frame_count: int | None  # from the container header; None when it does not say
  colour: ColourTags
  audio_streams: int
  duration: fractions.Fraction | None = None  # seconds, of the video stream (else the container)
  # The 3x3 display matrix (9 ints, FFmpeg's fixed point) that rotates or flips the coded frames
  # for display, e.g. a phone held upright; None for none. Frames are read and written as coded.
  display_matrix: tuple[int, ...] | None = None
  bit_depth: int = 8  # bits per sample of the coded frames (10 for most HDR and pro video)
  # HDR10 static metadata, as FFmpeg's structs: AVMasteringDisplayMetadata as 22 ints (the R, G,
  # B primaries and the white point as (num, den) pairs of CIE 1931 x, y; min and max luminance
  # as (num, den) cd/m^2; has_primaries, has_luminance) and AVContentLightMetadata (MaxCLL,
  # MaxFALL, cd/m^2). None where the input has none.
  mastering_display: tuple[int, ...] | None = None
  content_light: tuple[int, int] | None = None


class VideoReader:
  """Decodes the first video stream of a file; hands audio packets to a callback as they come.

    with VideoReader(path) as reader:
      for rgb, pts in reader.frames(audio_sink=writer.mux_audio):
        ...
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    name = os.fspath(path)
    if not self.path.exists():
      raise MediaError(f"{name}: file not found")
    if self.path.is_dir():
      raise MediaError(f"{name}: is a directory, not a video")
    if self.path.stat().st_size == 0:
      raise MediaError(f"{name}: file is empty")
    try:
      self.container = av.open(name, "r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
      raise MediaError(f"{name}: not a readable video ({one_line(error)})") from None
    try:
      if not self.container.streams.video:
        raise MediaError(f"{name}: has no video stream")
      self.stream = self.container.streams.video[0]
      self.audio_streams = list(self.container.streams.audio)
      context = self.stream.codec_context
      rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
      if not context.width or not context.height or not rate or not self.stream.time_base:
        raise MediaError(f"{name}: cannot tell the video's frame size, frame rate or time base")
      self.info = VideoInfo(
          width=context.width, height=context.height, average_rate=fractions.Fraction(rate),
          time_base=fractions.Fraction(self.stream.time_base),
          frame_count=self.stream.frames or None,
          duration=_declared_duration(self.container, self.stream),
          **_first_frame_side_data(name),
          bit_depth=max((c.bits for c in context.format.components), default=8)
          if context.format is not None else 8,
          colour=ColourTags(int(context.colorspace), int(context.color_range),
                            int(context.color_primaries), int(context.color_trc)),
          audio_streams=len(self.audio_streams))
      # Slice threads only: frame threading delays frames by a few and, at a damaged or cut-off
      # end, reports the error in place of frames that decoded fine (or not at all). Decoding
      # is milliseconds per frame against the network's seconds.
      self.stream.thread_type = "SLICE"
    except BaseException:
      self.container.close()
      raise

    self.decoded = 0  # frames yielded so far by `frames`
    self._first_pts = self._last_pts = None
    self._decode_error = None  # a decoder error after some frames (a damaged or cut-off end)

  def __enter__(self) -> VideoReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self.container.close()

  def frames(self, audio_sink: Callable[[av.Packet], None] | None = None, *,
             with_decoded: bool = False) -> Iterator[tuple]:
    """Yields (rgb, pts) in presentation order; audio packets go to `audio_sink` in file order.
    `rgb` is (H, W, 3) uint8, or uint16 (0..65535) for a video of more than 8 bits per sample.
    With `with_decoded`, (rgb, pts, decoded): the decoder's `av.VideoFrame` as well, for
    `VideoWriter.write(..., decoded=...)`.

    Frames without a timestamp, or whose timestamp does not increase, are placed one nominal
    frame duration after the previous one.
    """
    info, name = self.info, os.fspath(self.path)
    nominal = max(1, round(1 / (info.average_rate * info.time_base)))
    rgb_format = "rgb48le" if info.bit_depth > 8 else "rgb24"  # uint16 frames for 10-bit video
    flags = _SCALER_FLAGS_16 if info.bit_depth > 8 else _SCALER_FLAGS
    previous_pts = None
    streams = [self.stream] + (self.audio_streams if audio_sink else [])
    try:
      for packet in self.container.demux(streams):
        if packet.stream.type == "audio":
          if packet.dts is not None:  # the demuxer's empty end-of-stream packets have none
            audio_sink(packet)
          continue
        for frame in packet.decode():
          if (frame.width, frame.height) != (info.width, info.height):
            raise MediaError(f"{name}: the frame size changes mid-video ({info.width}x"
                             f"{info.height} to {frame.width}x{frame.height}); not supported")
          pts = frame.pts
          if pts is None or (previous_pts is not None and pts <= previous_pts):
            pts = 0 if previous_pts is None else previous_pts + nominal
          previous_pts = pts
          self.decoded += 1
          self._first_pts = pts if self._first_pts is None else self._first_pts
          self._last_pts = pts
          rgb = frame.to_ndarray(format=rgb_format, src_colorspace=info.colour.matrix,
                                 src_color_range=info.colour.range, interpolation=flags)
          yield (rgb, pts, frame) if with_decoded else (rgb, pts)
    except av.error.FFmpegError as error:
      if not self.decoded:
        raise MediaError(f"{name}: cannot decode ({one_line(error)})") from None
      # Frames decoded before the error are good: `truncation` reports it, the caller decides.
      self._decode_error = one_line(error)

  def declared_end_pts(self) -> int | None:
    """The video stream's end (its start time, else its first frame's pts, + its declared
    duration) in its time base, after `frames` has run; None where the stream declares no
    duration (Matroska)."""
    if not self.stream.duration or self._first_pts is None:
      return None
    start = self.stream.start_time if self.stream.start_time is not None else self._first_pts
    return start + self.stream.duration

  def truncation(self) -> str | None:
    """After `frames` is exhausted: why the file looks cut short (fewer frames than its header
    declares, or a decoded span well short of its declared duration), else None. Decoders
    (threaded ones especially) stop at a cut without an error, so this is the only sign."""
    info, name = self.info, os.fspath(self.path)
    error = f", then the decoder failed ({self._decode_error})" if self._decode_error else ""
    if info.frame_count and (error or info.frame_count - self.decoded
                             > max(1, info.frame_count // 100)):
      return (f"{name}: decoded {self.decoded} of the {info.frame_count} frames the file "
              f"declares{error} (truncated or damaged)")
    if error:
      return f"{name}: decoded {self.decoded} frames{error} (truncated or damaged)"
    if info.duration and self._last_pts is not None:
      interval = 1 / info.average_rate
      span = (self._last_pts - self._first_pts) * info.time_base + interval
      if info.duration - span > max(fractions.Fraction(1, 2), info.duration / 20, 2 * interval):
        return (f"{name}: decoded {self.decoded} frames ({float(span):.2f} s) of a video that "
                f"declares {float(info.duration):.2f} s (truncated or damaged)")
    return None


def _first_frame_side_data(name: str) -> dict:
  """`VideoInfo`'s display_matrix, mastering_display and content_light, from the first video
  frame (FFmpeg puts the stream's side data on every frame), read by a second, throw-away
  opening: the writer needs them before anything is muxed."""
  found = {}
  try:
    with av.open(name, "r") as container:
      frame = next(container.decode(container.streams.video[0]))
      # Looked up type by type: iterating PyAV 18's side data fails on some types (SEI).
      matrix = frame.side_data.get(SideDataType.DISPLAYMATRIX)
      if matrix is not None:
        values = tuple(int(v) for v in np.frombuffer(bytes(matrix), np.int32))
        found["display_matrix"] = None if values == _IDENTITY_MATRIX else values
      mastering = frame.side_data.get(SideDataType.MASTERING_DISPLAY_METADATA)
      if mastering is not None:
        values = tuple(int(v) for v in np.frombuffer(bytes(mastering), np.int32)[:22])
        if len(values) == 22 and values[20] and values[21]:  # primaries and luminance both set
          found["mastering_display"] = values
      light = frame.side_data.get(SideDataType.CONTENT_LIGHT_LEVEL)
      if light is not None:
        max_cll, max_fall = (int(v) for v in np.frombuffer(bytes(light), np.uint32)[:2])
        found["content_light"] = (max_cll, max_fall)
  except (av.error.FFmpegError, OSError, StopIteration, ValueError):
    pass  # undecodable files are reported by the reader itself
  return found


def x264_hdr_params(info: VideoInfo) -> str:
  """The input's HDR10 static metadata as x264 options (`mastering-display=...:cll=...`, x264's
  units: 1/50000 for chromaticities, 1/10000 cd/m^2 for luminance), or ""."""
  params = []
  if info.mastering_display is not None:
    v = info.mastering_display

    def scaled(index: int, unit: int) -> int:
      return round(fractions.Fraction(v[index], v[index + 1] or 1) * unit)

    (rx, ry), (gx, gy), (bx, by), (wx, wy) = [(scaled(i, 50000), scaled(i + 2, 50000))
                                              for i in (0, 4, 8, 12)]
    params.append(f"mastering-display=G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})"
                  f"L({scaled(18, 10000)},{scaled(16, 10000)})")
  if info.content_light is not None:
    params.append(f"cll={info.content_light[0]},{info.content_light[1]}")
  return ":".join(params)


# FFmpeg's identity display matrix: 1.0 is 1 << 16, except 1 << 30 in the last (w) column.
_IDENTITY_MATRIX = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def _declared_duration(container, stream) -> fractions.Fraction | None:
  if stream.duration and stream.time_base:
    return stream.duration * fractions.Fraction(stream.time_base)
  if container.duration:  # microseconds (av.time_base), over all streams
    return fractions.Fraction(container.duration, av.time_base)
  return None


def check_video_suffix(path: str | os.PathLike) -> None:
  suffix = pathlib.Path(path).suffix.lower()
  if suffix not in WRITABLE_VIDEO_SUFFIXES:
    raise MediaError(f"{os.fspath(path)}: unsupported video extension {suffix or '(none)'!r} "
                     f"(use one of {', '.join(WRITABLE_VIDEO_SUFFIXES)})")


def video_codec() -> str:
  """libx264 when the bundled FFmpeg has it, else mpeg4 (both ship in PyAV's wheels)."""
  return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class VideoWriter:
  """Encodes RGB frames at given timestamps and copies audio packets into one output file.

  Args:
    path: The file to write (its extension picks the container).
    info: The input's stream description: size and colour tags are kept.
    rate: The output's nominal frame rate (stored as the stream's average rate).
    time_base: The unit of the `pts` given to `write`.
    audio_templates: Input audio streams to copy; `mux_audio` takes their packets.
    crf: H.264's constant rate factor, 0 (best) .. 51; the default 18 is visually lossless.
    lossless: The RGB frames exactly (H.264 in RGB, `libx264rgb` at QP 0): large files that
      FFmpeg-based players (VLC, mpv) show but many hardware players do not.
  """

  def __init__(self, path: str | os.PathLike, info: VideoInfo, *, rate: fractions.Fraction,
               time_base: fractions.Fraction, audio_templates=(), crf: int = H264_CRF,
               lossless: bool = False):
    if not 0 <= crf <= 51:
      raise ValueError(f"crf={crf} must be in 0..51")
    self.name = os.fspath(path)
    self.colour = info.colour
    audio_templates = list(audio_templates)
    options = {}
    if pathlib.Path(path).suffix.lower() in (".mp4", ".m4v", ".mov"):
      # The MP4 muxer writes edit lists (B-frame delay, audio priming) in a 1/1000 s movie
      # timescale by default, which rounds the stream durations; a timescale that divides every
      # stream's time base keeps them exact.
      scale = math.lcm(fractions.Fraction(time_base).denominator,
                       *(fractions.Fraction(t.time_base).denominator for t in audio_templates))
      if scale < 2**31:
        options["movie_timescale"] = str(scale)
    try:
      self.container = av.open(self.name, "w", options=options)
    except (av.error.FFmpegError, OSError) as error:
      raise MediaError(f"cannot write {self.name}: {one_line(error)}") from None
    try:
      codec = "libx264rgb" if lossless else video_codec()
      if codec not in av.codecs_available:
        raise MediaError(f"cannot write lossless video: this FFmpeg build has no {codec}")
      self.stream = self.container.add_stream(codec, rate=rate)
      context = self.stream.codec_context
      context.width, context.height = info.width, info.height
      odd = info.width % 2 or info.height % 2
      deep = info.bit_depth > 8 and codec == "libx264"  # 10-bit in, 10-bit H.264 out
      context.pix_fmt = ("rgb24" if lossless else
                         ("yuv444p" if odd and codec == "libx264" else "yuv420p")
                         + ("10le" if deep else ""))
      self.bit_depth = 10 if deep else 8
      if odd and codec != "libx264":
        raise MediaError(f"cannot encode {info.width}x{info.height} with {codec} (odd size)")
      context.time_base = time_base
      self.stream.time_base = time_base
      if info.display_matrix is not None:  # rotation / flips for display, as in the input
        self.stream.set_display_matrix(list(info.display_matrix))
      context.colorspace = info.colour.colorspace
      context.color_range = info.colour.range
      context.color_primaries = info.colour.color_primaries
      context.color_trc = info.colour.color_trc
      if lossless:
        options = {"qp": "0", "preset": H264_PRESET}
        context.colorspace = 0  # AVCOL_SPC_RGB: the samples are RGB, no matrix
      elif codec == "libx264":
        options = {"crf": str(crf), "preset": H264_PRESET}
      else:
        options = {}
        context.qscale = MPEG4_QSCALE
      hdr = x264_hdr_params(info)
      if hdr and codec != "mpeg4":  # MPEG-4 Part 2 has no place for it
        options["x264-params"] = hdr
      self.stream.options = options
      self.pix_fmt = context.pix_fmt
      self.audio = {template.index: self.container.add_stream_from_template(template)
                    for template in audio_templates}
    except av.error.FFmpegError as error:
      self.container.close()
      raise MediaError(f"cannot set up {self.name}: {one_line(error)}") from None
    except BaseException:
      self.container.close()
      raise
    self.frames_written = 0

  def __enter__(self) -> VideoWriter:
    return self

  def __exit__(self, exc_type, *exc) -> None:
    self.close(flush=exc_type is None)

  def _mux(self, packets) -> None:
    try:
      self.container.mux(packets)
    except av.error.FFmpegError as error:
      raise MediaError(f"cannot write {self.name}: {one_line(error)}") from None

  def write(self, rgb: np.ndarray, pts: int, decoded: av.VideoFrame | None = None) -> None:
    """Encodes one (H, W, 3) uint8 (or uint16) RGB frame shown from `pts` (in the writer's time
    base) on. `decoded`, for a frame kept from the input, is the decoder's frame it came from
    (`VideoReader.frames(with_decoded=True)`): encoded as is where its pixel format is the
    output's, which spares it the YUV -> RGB -> YUV round trip."""
    if (decoded is not None and decoded.format.name == self.pix_fmt
        and (decoded.width, decoded.height) == (rgb.shape[1], rgb.shape[0])):
      decoded.pts, decoded.time_base = pts, self.stream.codec_context.time_base
      # The decoder's picture type would force the encoder's (libx264 obeys I/P/B on input).
      decoded.pict_type = av.video.frame.PictureType.NONE
      self._mux(self.stream.encode(decoded))
      self.frames_written += 1
      return
    if rgb.dtype == np.uint16 and self.bit_depth == 8:  # a 10-bit input into an 8-bit output
      rgb = ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
    # from_ndarray copies the buffer as packed rows: give it one (slices of a batch may not be).
    rgb = np.ascontiguousarray(rgb)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype == np.uint16 else "rgb24")
    if self.pix_fmt != "rgb24":
      frame = frame.reformat(format=self.pix_fmt, dst_colorspace=self.colour.matrix,
                             dst_color_range=self.colour.range, interpolation=_SCALER_FLAGS)
    frame.pts = pts
    self._mux(self.stream.encode(frame))
    self.frames_written += 1

  def mux_audio(self, packet: av.Packet) -> None:
    """Copies one demuxed packet of an input audio stream given in `audio_templates`."""
    stream = self.audio.get(packet.stream.index)
    if stream is None:
      return
    packet.stream = stream  # the muxer rescales its timestamps to the output stream's time base
    self._mux(packet)

  def close(self, flush: bool = True) -> None:
    """Flushes the encoder (unless abandoning the file) and finishes the container."""
    try:
      if flush:
        self._mux(self.stream.encode(None))
    finally:
      try:
        self.container.close()
      except av.error.FFmpegError as error:
        if flush:
          raise MediaError(f"cannot finish {self.name}: {one_line(error)}") from None
