"""File names of frames and videos, shared by the data package and by inference.

  IMAGE_SUFFIXES  what OpenCV's bundled codecs decode as frames of a folder.
  VIDEO_SUFFIXES  the containers read as videos (PyAV/OpenCV decode them all); which of them can
                  be *written* is `sepconv_jax.inference.video.WRITABLE_VIDEO_SUFFIXES`.
  natural_key     sort key that orders frame2 before frame10.
Standard library only.
"""

from __future__ import annotations

import re

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")


def natural_key(name: str) -> list:
  """Sort key: digit runs compare as numbers, the rest case-insensitively."""
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
