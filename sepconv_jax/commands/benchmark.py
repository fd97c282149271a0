"""Quality on the standard frame-interpolation sets, from the command line.

  sepconv benchmark --dataset middlebury --root middlebury/ --model ckpt/
  sepconv benchmark --dataset ucf101 --root ../shared/data/ucf101_interp \\
      --baseline average --json average.json
  sepconv benchmark --dataset video --root clip.mp4 --padding paper
  sepconv benchmark --dataset davis --root ../shared/data/davis_480p --motion

Prints one row per item (PSNR, SSIM, seconds) and the means; `--json FILE` writes
{"dataset", "model", "psnr", "ssim", "per_item": {...}, ...}. The metrics, layouts and timing are
defined in `sepconv_jax.evaluation` (scoring, datasets, runner). Only parses arguments and prints:
the work is there.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Sequence

from sepconv_jax.commands import add_alignment_arguments, add_version_argument
from sepconv_jax.evaluation import datasets, runner, scoring
from sepconv_jax.inference import media

EPILOG = """\
datasets (--root):
  middlebury  <root>/<Seq>/frame10.png, frame11.png, frame10i11.png, or the official
              <root>/other-data/<Seq>/ + <root>/other-gt-interp/<Seq>/
  ucf101      <root>/<id>/frame_00.png, frame_01_gt.png, frame_02.png (or a root holding
              ucf101_interp_ours/); motion masks from motion_masks_ucf101_interp/ next to it
  video       a video file, a folder of videos or a folder of frames: triplets (n-1, n, n+1)
              every --every frames, n = 1, 1 + every, ...; predict frame n
  davis       full 854x480 frames of the DAVIS sequences --sequences (default: the ones the
              project's training holds out, cows and drift-chicane) under <root>/JPEGImages/480p/
              or <root>/, triplets as for video every --every (default 10) frames

metrics: PSNR over RGB uint8 frames (rounded), data range 255; SSIM as scikit-image computes it
  (7x7 uniform window), which the published SepConv numbers use; --gaussian-ssim adds the
  11x11-Gaussian ("MATLAB") SSIM, labelled SSIM-G. --motion adds PSNR by motion magnitude (<4px,
  4-16px, >16px: the larger DIS optical flow from the true middle frame to an input frame).
  Seconds per frame exclude jit compilation.

--kernels (a model only): per motion bucket, over both input frames' pixels whose DIS flow from the
  true middle frame passes a forward-backward check: "followed", the share of that motion the
  kernels' centroids follow (1 fully, 0 not at all, as averaging); "error", the mean distance from
  centroid to flow; "spread", the kernels' mean width (wide kernels on moving objects are blur), in
  pixels. Defined in sepconv_jax.evaluation.kernels. The kernels are the network's on the pair as
  given, without --align's pre-alignment (and without --consensus).
"""


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """Usage errors as one `error:` line (no usage dump), like every other error of this tool."""

  def error(self, message: str):
    raise _UsageError(message)


def build_parser(prog: str = "sepconv benchmark") -> argparse.ArgumentParser:
  parser = _Parser(prog=prog,
                   description="Frame-interpolation quality (PSNR, SSIM) of a model or a baseline "
                               "on a standard set.",
                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=datasets.DATASETS)
  parser.add_argument("--root", required=True, metavar="PATH", help="where the dataset lies")
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--model", metavar="CHECKPOINT",
                      help="checkpoint directory (default: the project's default model)")
  source.add_argument("--baseline", choices=scoring.BASELINE_NAMES,
                      help="score frame averaging or frame repetition instead of a model")
  parser.add_argument("--padding", choices=("improved", "paper"), default="improved",
                      help="padding policy around the network (default: improved)")
  parser.add_argument("--ensemble", action="store_true",
                      help="average each prediction with the one from the reversed pair (twice "
                           "the work)")
  add_alignment_arguments(parser)
  parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                      help="the network's compute precision (default: auto, the backend's "
                           "default; see sepconv interpolate --help)")
  parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
  parser.add_argument("--gaussian-ssim", action="store_true",
                      help="also compute the 11x11-Gaussian ('MATLAB') SSIM")
  parser.add_argument("--masks", metavar="DIR|auto|none", default="auto",
                      help="ucf101: motion-mask folder for the motion-region PSNR (default: auto, "
                           "motion_masks_ucf101_interp/ next to the triplets)")
  parser.add_argument("--every", type=int, metavar="N",
                      help=f"video, davis: one triplet every N frames (default: "
                           f"{datasets.VIDEO_EVERY} for video, {datasets.DAVIS_EVERY} for davis)")
  parser.add_argument("--sequences", metavar="A,B,...",
                      help="davis: comma-separated sequence names (default: "
                           f"{','.join(datasets.DAVIS_HELD_OUT)})")
  parser.add_argument("--gap", type=int, default=1, metavar="G",
                      help="davis: predict frame n from frames n-G and n+G (default 1; 2 doubles "
                           "the motion)")
  parser.add_argument("--motion", action="store_true",
                      help="also PSNR by motion magnitude (optical flow per item)")
  parser.add_argument("--kernels", action="store_true",
                      help="also measure how far the model's kernels follow the motion, by motion "
                           "bucket (optical flow per item; see below)")
  parser.add_argument("--limit", type=int, metavar="N", help="evaluate the first N items only")
  parser.add_argument("--summary-only", action="store_true", help="print the means only")
  add_version_argument(parser)
  return parser


def _format(value: float | None, digits: int) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


class _Table:
  """Prints rows as items are scored, then the mean."""

  def __init__(self, *, gaussian: bool, masked: bool, motion: bool, width: int, quiet: bool):
    self.gaussian, self.masked, self.motion, self.quiet = gaussian, masked, motion, quiet
    self.width = max(width, len("mean"))
    columns = ["PSNR", "SSIM"] + (["SSIM-G"] if gaussian else []) + (
        ["PSNR-mask"] if masked else []) + (
        [f"PSNR{name}" for name, _, _ in scoring.MOTION_BUCKETS] if motion else []) + [
        "seconds"]
    self.header = f"{'item':<{self.width}}  " + "  ".join(f"{c:>11}" for c in columns)

  def row(self, name: str, scores) -> str:
    """`scores`: an `ItemResult` or a `Report` (the same metric names)."""
    cells = [_format(scores.psnr, 2), _format(scores.ssim, 4)]
    if self.gaussian:
      cells.append(_format(scores.ssim_gaussian, 4))
    if self.masked:
      cells.append(_format(scores.psnr_masked, 2))
    if self.motion:
      cells += self._motion_cells(scores.psnr_motion)
    seconds = scores.seconds if isinstance(scores, runner.ItemResult) else (
        scores.seconds_per_frame)
    cells.append(_format(seconds, 3))
    return self._line(name, cells)

  def _line(self, name: str, cells: list[str]) -> str:
    return f"{name:<{self.width}}  " + "  ".join(f"{c:>11}" for c in cells)

  @staticmethod
  def _motion_cells(by_motion: dict | None) -> list[str]:
    return [_format((by_motion or {}).get(bucket), 2) for bucket, _, _ in scoring.MOTION_BUCKETS]

  def start(self) -> None:
    if not self.quiet:
      print(self.header, flush=True)

  def item(self, result: runner.ItemResult) -> None:
    if not self.quiet:
      print(self.row(result.name, result), flush=True)

  def mean(self, report: runner.Report) -> None:
    if self.quiet:
      print(self.header)
    else:
      print("-" * len(self.header))
    print(self.row("mean", report))
    if self.motion:  # the motion buckets over all pixels together: steadier for sparse buckets
      blanks = ["-"] * (2 + self.gaussian + self.masked)
      print(self._line("pooled", blanks + self._motion_cells(report.psnr_motion_pooled) + ["-"]))


def _predictor(args):
  """(predict, model name) for the parsed arguments; loads the model (imports jax) if needed."""
  if args.baseline:
    return scoring.BASELINES[args.baseline], f"baseline:{args.baseline}"
  # Imports jax: only once the inputs are known to be good.
  from sepconv_jax.inference import pipelines  # pylint: disable=import-outside-toplevel
  from pallas_kernels.allocator import keep_freed_memory  # pylint: disable=import-outside-toplevel
  keep_freed_memory()  # every frame reuses the previous frame's buffers
  interpolator = pipelines.load_interpolator(args.model, padding=args.padding,
                                             ensemble=args.ensemble, align=args.align,
                                             consensus=args.consensus,
                                             precision=args.precision)
  return interpolator, os.fspath(args.model) if args.model else "default"


def _print_kernels(statistics: dict) -> None:
  print("kernels against the DIS flow from the true middle frame (both frames' trusted pixels):")
  print(f"{'bucket':<8}  {'followed':>9}  {'error px':>9}  {'spread px':>9}  {'pixels':>10}")
  for name, values in statistics.items():
    print(f"{name:<8}  {_format(values['followed'], 3):>9}  {_format(values['error'], 2):>9}  "
          f"{_format(values['spread'], 2):>9}  {values['pixels']:>10}")


def _check_json_path(path: str) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.is_dir():
    raise media.MediaError(f"--json {os.fspath(path)} is a directory; give a file name")
  media.check_writable_dir(path.parent, what=os.fspath(path))
  return path


def run(args) -> int:
  masks = {"auto": "auto", "none": None}.get(args.masks, args.masks)
  # The cheap checks first: a wrong root or output path fails before the model loads.
  sequences = [n for n in (args.sequences or "").split(",") if n] or None
  triplets = datasets.read_dataset(args.dataset, args.root, masks=masks, every=args.every,
                                     sequences=sequences, gap=args.gap)
  json_path = _check_json_path(args.json) if args.json else None
  predict, model_name = _predictor(args)
  gaussian = args.gaussian_ssim
  masked = args.dataset == "ucf101" and datasets.ucf101_folders(args.root, masks)[1] is not None
  # UCF101 ids are short; Middlebury names up to 11 characters; videos "<stem>/<index>".
  table = _Table(gaussian=gaussian, masked=masked, motion=args.motion, width=24,
                 quiet=args.summary_only)
  print(f"{args.dataset} ({os.fspath(args.root)}), model {model_name}"
        + ("" if args.baseline else f", padding {args.padding}, network: "
                                    f"{predict.describe_compute()}")
        + (", ensemble (forward and reversed pair)" if args.ensemble else "")
        + ("" if args.baseline else predict.describe_alignment()))
  print(f"PSNR: RGB uint8, data range 255. {scoring.SSIM_LABEL}."
        + (f" {scoring.SSIM_GAUSSIAN_LABEL}." if gaussian else "")
        + (" PSNR-mask: inside the motion masks (their black pixels)." if masked else "")
        + (" PSNR<4px etc.: over the pixels moving that far (optical flow from the true middle "
           "frame)." if args.motion else ""))
  table.start()
  info = {"root": os.fspath(args.root)}
  if args.dataset == "davis":
    info.update(sequences=sequences or list(datasets.DAVIS_HELD_OUT), gap=args.gap,
                every=args.every or datasets.DAVIS_EVERY)
  if not args.baseline:
    info["padding"] = args.padding
    info["ensemble"] = args.ensemble
    info["align"] = predict.align
    info["consensus"] = predict.consensus
    info["precision"] = predict.precision
  report = runner.evaluate(triplets, predict, dataset=args.dataset, model=model_name,
                               gaussian_ssim=gaussian, limit=args.limit, on_item=table.item,
                               info=info, motion=args.motion,
                               kernels=predict.kernel_maps if args.kernels else None)
  table.mean(report)
  if report.kernels is not None:
    _print_kernels(report.kernels)
  print(f"{len(report.items)} items; seconds per frame {report.seconds_per_frame:.4f} "
        "(mean of timed predictions, compilation excluded)"
        + (f"; PSNR-mask over {report.masked_count} items with a non-empty mask"
           if report.masked_count else ""))
  if json_path is not None:
    with media.atomic_outputs([json_path]) as (temp,):
      temp.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    print(f"wrote {os.fspath(json_path)}")
  return 0


def main(argv: Sequence[str] | None = None, prog: str = "sepconv benchmark") -> int:
  """Runs the benchmark; every user error is one `error:` line on stderr and a non-zero status."""
  try:
    args = build_parser(prog).parse_args(argv)
    if args.every is not None and args.every < 3:
      raise _UsageError(f"--every {args.every} must be at least 3")
    if (args.sequences is not None or args.gap != 1) and args.dataset != "davis":
      raise _UsageError("--sequences and --gap apply to --dataset davis")
    if args.gap < 1:
      raise _UsageError(f"--gap {args.gap} must be at least 1")
    if args.limit is not None and args.limit < 1:
      raise _UsageError(f"--limit {args.limit} must be at least 1")
    if args.ensemble and args.baseline:
      raise _UsageError("--ensemble applies to a model, not to --baseline")
    if args.precision != "auto" and args.baseline:
      raise _UsageError("--precision applies to a model, not to --baseline")
    if args.kernels and args.baseline:
      raise _UsageError("--kernels applies to a model, not to --baseline")
    if args.align is not None and args.baseline:
      raise _UsageError("--align applies to a model, not to --baseline")
    if args.consensus is not None and args.baseline:
      raise _UsageError("--consensus applies to a model, not to --baseline")
  except _UsageError as error:
    print(f"error: {error} (see --help)", file=sys.stderr)
    return 2
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Only now: it imports jax, which `--help` and usage errors need not wait for.
  from sepconv_jax.network.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    return run(args)
  except (datasets.EvaluationError, media.MediaError, CheckpointError) as error:
    print(f"error: {media.one_line(error)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    return 130

