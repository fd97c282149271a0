"""`sepconv train` (and `python train.py`): `--data DIR --workdir DIR [--config default] ...`.

  sepconv train --workdir runs/l1                                     # the paper, on the cache
  sepconv train --workdir runs/l1 --resume                            # continue
  sepconv train --workdir runs/l1 --resume --decay 3000:4000 --steps 4000   # ... anneal the end
  sepconv train --workdir runs/lf --loss l1+vgg --nu 1e-5 \\
      --vgg-weights vgg19-dcbb9e9d.pth --init-from runs/l1/checkpoints/STEP  # fine-tune

--data defaults to datasets/davis_tfds, where `sepconv prepare` writes the cache. Training needs
the `train` extra (TensorFlow, tensorflow-datasets): `pip install "sepconv-jax[train]"`.

Configs (`sepconv_jax.training.configs`): default (batch 16, 128x128 crops, AdaMax lr 1e-3, L1),
frame_average (start at frame averaging, lr 2e-4), cpu (the shipped model's recipe) and tiny
(tests, laptops); flags override single fields. The work directory receives checkpoints/<step>/
(each loadable with `sepconv_jax.load_model`), tensorboard/ event files, samples/<step>/ images
and config.json.

Several hosts: start the same command on every host with --distributed (coordinator address,
process count and index from the environment, as `jax.distributed.initialize()` reads them).

Only parses arguments: the work is in `sepconv_jax.training.loop`. Problems with flags, data or the
work directory print one `error:` line and exit non-zero (2 for usage, 1 otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from sepconv_jax.commands import OneLineParser, add_version_argument, positive, unit_interval

CONFIGS = ("default", "frame_average", "cpu", "tiny")  # mirrors training.configs.CONFIGS
LOSSES = ("l1", "l2", "ssim", "vgg", "l1+vgg")  # mirrors sepconv_jax.training.losses.LOSSES


def _decay_range(text: str) -> tuple[int, int]:
  start, sep, end = text.partition(":")
  try:
    if sep:
      return int(start), int(end)
  except ValueError:
    pass
  raise argparse.ArgumentTypeError(f"expected START:END steps, got {text!r}")


def build_parser(prog: str = "sepconv train") -> argparse.ArgumentParser:
  p = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0],
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", choices=CONFIGS, default="default",
                 help="base configuration (default: %(default)s)")
  p.add_argument("--data", metavar="DIR",
                 help="prepared cache (sepconv prepare --out DIR; default: datasets/davis_tfds)")
  p.add_argument("--workdir", metavar="DIR",
                 help="checkpoints, TensorBoard events, samples and config.json go here "
                      "(default: runs/CONFIG-LOSS)")
  p.add_argument("--loss", choices=LOSSES)
  p.add_argument("--nu", type=float, help="weight of the VGG term of l1+vgg (default 1e-5)")
  p.add_argument("--vgg-weights", metavar="FILE",
                 help="local ImageNet VGG-19 weights (.pth or .npz) for the vgg losses")
  p.add_argument("--lr", type=positive(float), help="AdaMax learning rate")
  p.add_argument("--warmup-steps", type=int, metavar="N",
                 help="ramp the learning rate up linearly over the first N steps")
  p.add_argument("--decay", type=_decay_range, metavar="START:END",
                 help="cosine-decay the learning rate from step START to --final-lr at step END "
                      "(may be added when resuming, if START is still ahead)")
  p.add_argument("--final-lr", type=float, metavar="LR",
                 help="learning rate at the end of --decay (default 1e-5)")
  p.add_argument("--batch-size", type=positive(int), help="global batch size")
  p.add_argument("--crop-size", type=positive(int), help="training crop side (multiple of 32)")
  p.add_argument("--min-scale", type=float, metavar="S",
                 help="downscale training patches by a random factor in [S, 1] first (S in (0, 1])")
  p.add_argument("--alternate-crop-size", type=positive(int), metavar="N",
                 help="mixed crops: every second step trains on NxN crops instead, as many "
                      "pixels per step (the batch scaled by (--crop-size / N)^2)")
  p.add_argument("--alternate-min-scale", type=float, metavar="S",
                 help="those crops' random downscale factor is in [S, 1] (default 1: none)")
  p.add_argument("--max-flow", type=positive(float), metavar="PX",
                 help="train only on patches whose mean motion between the two input frames "
                      "is at most PX pixels (the cache's DIS flow; the 51-tap kernels follow "
                      "at most 50; default: every patch)")
  p.add_argument("--alternate-min-flow", type=positive(float), metavar="PX",
                 help="the --alternate-crop-size crops come only from patches whose mean motion "
                      "between the input frames is at least PX pixels (large crops for large "
                      "motion; default: every patch)")
  p.add_argument("--synthetic-objects", type=float, metavar="P",
                 help="paste a rigid object moving 2-24 px from the middle frame over this share "
                      "of the training crops (large motion with a known answer; default 0)")
  p.add_argument("--all-orientations", action="store_true",
                 help="turn or mirror each crop by one of the square's eight symmetries "
                      "(default: one of four: as is, rot90, the two flips)")
  p.add_argument("--channel-permutation", action="store_true",
                 help="put each crop's RGB channels in a random order (one of six, the same "
                      "for its three frames)")
  p.add_argument("--prealign", type=unit_interval, metavar="S",
                 help="warp the input frames of every crop and full validation frame S of the "
                      "way to the middle along their optical flow (OpenCV DIS), to train a model "
                      "for sepconv interpolate --align S (0 to 1; default 0: off)")
  captured = p.add_mutually_exclusive_group()
  captured.add_argument("--unaligned-sources", action="store_true",
                        help="with --prealign: the network also sees the frames as captured "
                             "and can take pixels from them where the flow went wrong (6 "
                             "channels a frame, four kernel pairs; --init-from a network "
                             "without them starts it exactly where that one was)")
  captured.add_argument("--captured-input", action="store_true",
                        help="with --prealign: the network's encoder also sees the frames as "
                             "captured (6 channels a frame), kernels stay for the pre-aligned "
                             "frames alone: the cheap half of --unaligned-sources (--init-from "
                             "a network without it starts it exactly where that one was)")
  p.add_argument("--unaligned-lr-scale", type=positive(float), metavar="X",
                 help="with --unaligned-sources or --captured-input: X times the learning rate "
                      "for what only the captured frames use (they start at zero; default 1)")
  length = p.add_mutually_exclusive_group()
  length.add_argument("--epochs", type=positive(int))
  length.add_argument("--steps", type=positive(int), help="total steps (instead of --epochs)")
  p.add_argument("--steps-per-epoch", type=positive(int),
                 help="default: training examples // batch size")
  p.add_argument("--checkpoint-every", type=positive(int), help="steps between checkpoints")
  p.add_argument("--keep", type=positive(int), help="latest checkpoints to keep (and the best)")
  p.add_argument("--log-every", type=positive(int))
  p.add_argument("--validation-batches", type=positive(int),
                 help="validate on at most this many batches (default: the whole split)")
  p.add_argument("--samples", type=int, help="full frames interpolated per validation")
  p.add_argument("--full-validation", type=int, metavar="N",
                 help="also score N full-frame held-out triplets at each validation, overall and "
                      "by motion (<4px, 4-16px, >16px), and rank checkpoints by them (0: off)")
  p.add_argument("--full-validation-gap", type=positive(int), metavar="G",
                 help="those triplets are frames (n-G, n, n+G) (default 1; 2 doubles the motion)")
  p.add_argument("--centroid-weight", type=float, metavar="W",
                 help="flow-guided kernels: add W x the distance of each kernel's centroid from "
                      "the optical flow to the true middle frame (pixels; 0: off)")
  p.add_argument("--centroid-steps", type=positive(int), metavar="N",
                 help="anneal --centroid-weight linearly to 0 at step N (default: constant)")
  p.add_argument("--motion-weight", type=float, metavar="A",
                 help="weight the l1 loss of each pixel by 1 + A x min(1, its motion / 16 px), "
                      "the optical flow to the true middle frame (default 0: plain l1)")
  p.add_argument("--ema-decay", type=float, metavar="D",
                 help="validate, rank and save an exponential moving average of the parameters "
                      "(each step: D x average + (1 - D) x parameters; 0.999 spans about 1,000 "
                      "steps); the raw parameters are kept for --resume (default: off)")
  p.add_argument("--centroid-flows", choices=("dis", "objects"),
                 help="what --centroid-weight pulls the kernels to: dis (optical flow on every "
                      "crop, the default) or objects (the exact motion of --synthetic-objects)")
  p.add_argument("--seed", type=int)
  p.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                 help="the convolutions' compute precision: bfloat16 operands with float32 "
                      "accumulation run on the CPU's bfloat16 units; parameters, optimizer "
                      "state and checkpoints stay float32 (default: auto, bfloat16 on CPUs "
                      "where it is measured faster: AMX, AMD's AVX512-BF16; a --resume may "
                      "change it)")
  p.add_argument("--resume", action="store_true",
                 help="continue from the latest checkpoint in --workdir (if any)")
  p.add_argument("--init-from", metavar="CHECKPOINT",
                 help="start from this checkpoint's parameters (e.g. another loss's best)")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() first (multi-host)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  add_version_argument(p)
  return p


def main(argv=None, prog: str = "sepconv train") -> int:
  parser = build_parser(prog)
  args = parser.parse_args(argv)
  if args.final_lr is not None and args.decay is None:
    parser.error("--final-lr needs --decay START:END")
  if args.workdir is None:
    args.workdir = os.path.join("runs", f"{args.config}-{args.loss or 'l1'}".replace("+", "_"))
  if args.data is not None and not os.path.isdir(args.data):
    print(f"error: data directory {args.data} does not exist", file=sys.stderr)
    return 1
  if args.init_from is not None and not os.path.isdir(args.init_from):
    print(f"error: --init-from {args.init_from} is not a checkpoint directory", file=sys.stderr)
    return 1
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences TensorFlow's start-up notice
  from sepconv_data import missing_training_packages  # pylint: disable=import-outside-toplevel
  missing = missing_training_packages()
  if missing is not None:
    print(f"error: {missing}", file=sys.stderr)
    return 1
  from pallas_kernels.allocator import keep_freed_memory  # pylint: disable=import-outside-toplevel
  keep_freed_memory()  # each step reuses the previous step's buffers
  from sepconv_jax.inference.media import one_line  # pylint: disable=import-outside-toplevel
  from sepconv_jax.training import configs, loop  # pylint: disable=import-outside-toplevel
  try:
    config = configs.get_config(args.config)
    config = config.with_overrides(
        model=(dataclasses.replace(config.model, unaligned_sources=args.unaligned_sources,
                                   captured_input=args.captured_input)
               if args.unaligned_sources or args.captured_input else None),
        data_dir=args.data, loss=args.loss, nu=args.nu, vgg_weights=args.vgg_weights,
        learning_rate=args.lr, batch_size=args.batch_size, crop_size=args.crop_size,
        min_scale=args.min_scale, alternate_crop_size=args.alternate_crop_size,
        alternate_min_scale=args.alternate_min_scale, max_flow=args.max_flow,
        alternate_min_flow=args.alternate_min_flow,
        synthetic_objects=args.synthetic_objects,
        all_orientations=args.all_orientations or None,
        channel_permutation=args.channel_permutation or None, prealign=args.prealign,
        unaligned_lr_scale=args.unaligned_lr_scale,
        warmup_steps=args.warmup_steps,
        decay_start=args.decay and args.decay[0], decay_end=args.decay and args.decay[1],
        final_learning_rate=args.final_lr,
        epochs=args.epochs, steps=args.steps, steps_per_epoch=args.steps_per_epoch,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep,
        log_every=args.log_every, seed=args.seed, validation_batches=args.validation_batches,
        num_samples=args.samples, full_validation=args.full_validation,
        full_validation_gap=args.full_validation_gap, centroid_weight=args.centroid_weight,
        centroid_steps=args.centroid_steps, centroid_flows=args.centroid_flows,
        motion_weight=args.motion_weight, ema_decay=args.ema_decay,
        precision=None if args.precision in (None, "auto") else args.precision)
    if args.epochs is not None:  # --epochs given: the config's step count must not win
      config = dataclasses.replace(config, steps=None)
    result = loop.train(config, args.workdir, resume=args.resume, init_from=args.init_from,
                        progress=not args.no_progress, distributed=args.distributed)
  except (ValueError, loop.TrainingError) as error:  # bad data (CacheError) and VGG files too
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("error: interrupted (the latest checkpoint is intact; continue with --resume)",
          file=sys.stderr)
    return 130
  best = f", best validation at step {result.best_step}" if result.best_step is not None else ""
  print(f"trained to step {result.step}; checkpoints in {result.workdir / 'checkpoints'}{best}")
  return 0
