"""Synthetic inputs shared by the tests: frame folders of a panning texture, and the tiny training
cache prepared from them (real `sepconv_data.builder` code on made-up frames)."""

from __future__ import annotations

import pathlib
from typing import Sequence

import cv2
import numpy as np

from sepconv_data import builder, extract

TRAINING_PATCH = 48
TRAINING_SHIFT = 2  # px per frame: x0 -> x1 moves 4 px, within the tiny model's 5-tap kernels
TRAINING_SEQUENCES = ("pan_a", "pan_b", "pan_c", "pan_d")


def training_cache_config(patch_size: int = TRAINING_PATCH) -> builder.TripletConfig:
  return builder.make_config(
      extract.ExtractConfig(patch_size=patch_size, patches_tried=8, max_patches=4,
                            flow_scale=1.0, max_height=None, seed=1),
      validation_fraction=0.25)


def write_panning_sequences(root: pathlib.Path, names: Sequence[str], *, frames: int, shift: int,
                            height: int, width: int) -> pathlib.Path:
  """Folders `root/<name>/00000.png ...` of a blurred random texture panning `shift` px a frame."""
  rng = np.random.default_rng(0)
  for name in names:
    texture = cv2.GaussianBlur(
        rng.integers(0, 256, (height, width + shift * frames, 3), dtype=np.uint8), (5, 5), 0)
    (root / name).mkdir(parents=True)
    for i in range(frames):
      cv2.imwrite(str(root / name / f"{i:05d}.png"), texture[:, shift * i:shift * i + width])
  return root


def prepare_training_cache(base: pathlib.Path, patch_size: int = TRAINING_PATCH) -> pathlib.Path:
  """A tiny prepared cache (4 panning 64x80 sequences, 6 frames, `patch_size` square patches)
  for training tests; its data_dir."""
  source = write_panning_sequences(base / "sources" / "tiny", TRAINING_SEQUENCES, frames=6,
                                   shift=TRAINING_SHIFT, height=64, width=80)
  builder.prepare([source], base / "out", training_cache_config(patch_size), workers=1,
                  progress=False)
  return base / "out"
