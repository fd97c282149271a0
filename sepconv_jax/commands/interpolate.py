"""`sepconv interpolate` (also `python interpolate.py`): a pair of images, a frame folder or a video.

  sepconv interpolate --pair one.png two.png --out middle.png [--factor 4]
  sepconv interpolate --frames frames/ --out frames_x2/
  sepconv interpolate --video clip.mp4 --out clip_2x.mp4 [--factor 2|4|8]

Only parses arguments: the work is in `sepconv_jax.inference`: `pipelines`, `media` (images),
`sepconv_jax.inference.video` (PyAV) and `sepconv_jax.inference.scene` (scene cuts).
"""

from __future__ import annotations

import argparse
import os
import sys

from sepconv_jax.commands import (OneLineParser, add_alignment_arguments, add_version_argument,
                                  at_least)

# Mirror sepconv_jax.inference.interpolator.FACTORS and .scene.DEFAULT_THRESHOLD, so that --help
# and usage errors answer at once, before jax is imported.
FACTORS = (2, 4, 8)
DEFAULT_SCENE_THRESHOLD = 0.2
# Mirrors pallas_kernels.conv.PRECISIONS, plus "auto".
PRECISIONS = ("auto", "float32", "bfloat16")
H264_CRF = 18  # mirrors sepconv_jax.inference.video.H264_CRF

EPILOG = """\
outputs:
  --pair    OUT is the middle frame. With --factor 4 or 8 the factor-1 frames are written as
            OUT's name with _1, _2, ... before the extension, in time order (mid.png ->
            mid_1.png, mid_2.png, mid_3.png).
  --frames  OUT is a new (or empty) directory: 000000.png, 000001.png, ... in the input's
            format, factor*(N-1)+1 frames. Inputs are the folder's images in natural order
            (frame2 before frame10).
  --video   fps exactly factor x the input's, every input frame kept, factor*N frames (the last
            frame is held for factor-1 extra frames so that the duration matches the input),
            audio streams copied without re-encoding. H.264 (CRF 18, preset medium; --crf,
            --lossless), 10-bit for 10-bit input, .mp4/.m4v/.mov/.mkv.
            A video that decodes to fewer frames (or a shorter span) than it declares is an
            error unless --allow-truncated.

images: grey is expanded to RGB, 16-bit is rounded to 8-bit (a --frames sequence of 16-bit
  PNG/TIFF, and a --pair written as PNG/TIFF, stay 16-bit), an alpha channel is dropped when fully opaque; images with transparent
  pixels are refused.
scene cuts: where the two frames' colour histograms differ by more than --scene-threshold (total
  variation distance of 8x8x8-bin RGB histograms, 0..1), the in-between frames repeat the first
  frame instead of morphing; 1 turns the test off.
model: without --model, the project's default model (sepconv_jax/weights/default).
alignment: --align S warps both frames S of the way to the middle along OpenCV's DIS optical flow
  (no weights) before the network, which then follows the rest of the motion. auto (the default)
  is the model's own: 0.5 for the default model, S for one trained with --prealign S, 0 (the
  network alone) for any other; the closing line says which ran. --consensus W then blends the
  mean of both frames warped all the way along that flow into the network's frame, at most W of
  it, where the two warped frames agree with each other and with the network (sharp where the
  flow is right, the network's frame where it is not). auto: 0.75 for the default model, else 0.
precision: the network's convolutions in float32, or in bfloat16 (bfloat16 operands, float32
  accumulation; the weights and everything else stay float32) on the CPU's bfloat16 units through
  oneDNN. auto picks bfloat16 on CPUs where it is measured faster (AMX, AMD's AVX512-BF16), float32
  elsewhere. The closing line says which path ran.
"""


def _threshold(text: str) -> float:
  value = float(text)
  if not 0.0 <= value <= 1.0:
    raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
  return value


def _crf(text: str) -> int:
  value = at_least(0)(text)
  if value > 51:
    raise argparse.ArgumentTypeError(f"{value} is more than 51")
  return value


def build_parser(prog: str = "sepconv interpolate") -> argparse.ArgumentParser:
  parser = OneLineParser(
      prog=prog,
      description="SepConv video frame interpolation: the frames between two images, a frame\n"
                  "sequence, or a video at 2x, 4x or 8x its frame rate.",
      epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--pair", nargs=2, metavar=("FIRST", "SECOND"),
                      help="two images: write the frame(s) between them")
  source.add_argument("--frames", metavar="DIR", help="a folder of PNG/JPEG frames")
  source.add_argument("--video", metavar="FILE", help="a video file")
  parser.add_argument("--out", required=True, help="output image, folder or video (see below)")
  parser.add_argument("--model", metavar="CHECKPOINT",
                      help="checkpoint directory (sepconv_jax.save_model, sepconv convert); "
                           "default: the project's default model")
  parser.add_argument("--factor", type=int, choices=FACTORS, default=2,
                      help="frame-rate multiplier (default: 2)")
  parser.add_argument("--padding", choices=("improved", "paper"), default="improved",
                      help="how frames are padded to the network's size multiple "
                           "(default: improved)")
  parser.add_argument("--ensemble", action="store_true",
                      help="also interpolate each pair in reverse time order and average the "
                           "two results: twice the work, slightly sharper and cleaner")
  add_alignment_arguments(parser)
  parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                      help="the network's compute precision (default: auto, see below)")
  parser.add_argument("--scene-threshold", type=_threshold, default=DEFAULT_SCENE_THRESHOLD,
                      metavar="T", help="histogram distance above which two frames are a scene "
                                        f"cut (default: {DEFAULT_SCENE_THRESHOLD}; 1 disables)")
  parser.add_argument("--max-untiled-pixels", type=at_least(0), metavar="N",
                      help="frames with more pixels are interpolated in overlapping tiles "
                           "(default: 1280*736)")
  parser.add_argument("--tile-size", type=at_least(32), metavar="PX",
                      help="edge of a square tile for large frames (default: 512)")
  parser.add_argument("--batch-size", type=at_least(1), metavar="B",
                      help="frame pairs per network call for --frames/--video (default: as many "
                           "as fit one 1280x720 frame's pixels, at most 8)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing output file (--pair, --video)")
  quality = parser.add_mutually_exclusive_group()
  quality.add_argument("--crf", type=_crf, default=H264_CRF, metavar="N",
                       help=f"--video: H.264 quality, 0 (best) .. 51 (default: {H264_CRF}, "
                            "visually lossless)")
  quality.add_argument("--lossless", action="store_true",
                       help="--video: the frames exactly (H.264 in RGB at QP 0; large files "
                            "that FFmpeg-based players such as VLC and mpv play)")
  parser.add_argument("--allow-truncated", action="store_true",
                      help="--video: write what decodes of a file that is cut short or damaged "
                           "(default: stop with an error that says how much decoded)")
  add_version_argument(parser)
  return parser


def main(argv: list[str] | None = None, prog: str = "sepconv interpolate") -> int:
  args = build_parser(prog).parse_args(argv)
  # Keep stderr to our own lines should any dependency pull in TensorFlow (as conftest.py does).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    # Imports jax: only once the arguments are known to be good.
    from sepconv_jax.inference import pipelines  # pylint: disable=import-outside-toplevel
  except KeyboardInterrupt:  # Ctrl-C during the imports: nothing has been written yet
    print("error: interrupted", file=sys.stderr)
    return 130
  return pipelines.run(args)
