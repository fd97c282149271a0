"""Padding policies that let the network (sizes divisible by 32) run on frames of any size.

Both policies replicate the border ("edge" padding) and pad right and bottom up to a multiple of
128, as the published reference does (more than the network's 32 needs; kept so that results match
the published numbers). They differ in what happens first:

  paper     replicate-pad K//2 (25) pixels on every side first, then right/bottom up to the
            multiple; the network sees a frame surrounded by its own border.
  improved  no pre-padding, only right/bottom up to the multiple (about 0.1 dB better on
            Middlebury with the published weights).

Everything here is a pure function of arrays laid out (..., H, W, C) (NHWC frames, or NHWC kernel
maps for cropping): `plan_padding` -> `pad` -> run the network -> `crop`, or `run_padded` for all
three at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sepconv_jax.network.model import PUBLISHED_KERNEL_SIZE, SIZE_MULTIPLE

POLICIES = ("paper", "improved")
DEFAULT_POLICY = "improved"
# The published reference pads to multiples of 128, not of the network's 32.
DEFAULT_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class PaddingPlan:
  """Pixels added on each side of an H x W frame; `padded_height/width` is what the net sees."""
  height: int
  width: int
  top: int
  bottom: int
  left: int
  right: int

  @property
  def padded_height(self) -> int:
    return self.top + self.height + self.bottom

  @property
  def padded_width(self) -> int:
    return self.left + self.width + self.right


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def plan_padding(height: int, width: int, *, policy: str = DEFAULT_POLICY,
                 kernel_size: int = PUBLISHED_KERNEL_SIZE,
                 multiple: int = DEFAULT_MULTIPLE) -> PaddingPlan:
  """How to pad an H x W frame under `policy` ('paper' or 'improved')."""
  if policy not in POLICIES:
    raise ValueError(f"unknown padding {policy=}; expected one of {POLICIES}")
  if height < 1 or width < 1:
    raise ValueError(f"frame must be non-empty, got {height=}, {width=}")
  if multiple < 1 or multiple % SIZE_MULTIPLE:
    raise ValueError(f"{multiple=} must be a positive multiple of {SIZE_MULTIPLE} "
                     "(the network pools five times)")
  before = kernel_size // 2 if policy == "paper" else 0
  padded_height = _round_up(before + height + before, multiple)
  padded_width = _round_up(before + width + before, multiple)
  return PaddingPlan(height=height, width=width, top=before, left=before,
                     bottom=padded_height - height - before, right=padded_width - width - before)


def pad(frame: jax.Array, plan: PaddingPlan) -> jax.Array:
  """Replicate-pads a (..., H, W, C) array to (..., padded_height, padded_width, C)."""
  if frame.shape[-3:-1] != (plan.height, plan.width):
    raise ValueError(f"frame.shape={frame.shape} does not match the plan's "
                     f"{plan.height}x{plan.width} frame")
  widths = [(0, 0)] * (frame.ndim - 3) + [(plan.top, plan.bottom), (plan.left, plan.right), (0, 0)]
  return jnp.pad(frame, widths, mode="edge")


def crop(padded: jax.Array, plan: PaddingPlan) -> jax.Array:
  """Undoes `pad` on any (..., padded_height, padded_width, C) array (frames or kernel maps)."""
  if padded.shape[-3:-1] != (plan.padded_height, plan.padded_width):
    raise ValueError(f"padded.shape={padded.shape} does not match the plan's padded size "
                     f"{plan.padded_height}x{plan.padded_width}")
  return padded[..., plan.top:plan.top + plan.height, plan.left:plan.left + plan.width, :]


def run_padded(fn: Callable[[jax.Array, jax.Array], Any], frame0: jax.Array, frame1: jax.Array,
               *, policy: str = DEFAULT_POLICY, kernel_size: int = PUBLISHED_KERNEL_SIZE,
               multiple: int = DEFAULT_MULTIPLE) -> Any:
  """`fn(pad(frame0), pad(frame1))` cropped back to the frames' size.

  frame0, frame1: (B, H, W, C) of any H, W. `fn` may return one array or a pytree of arrays
  (e.g. the frame and its kernel maps): every leaf is cropped. Jit `fn`, not this function, so that
  frames of different sizes that pad to the same size share one compilation.
  """
  if frame0.shape != frame1.shape:
    raise ValueError(f"frames differ in shape: {frame0.shape=}, {frame1.shape=}")
  plan = plan_padding(*frame0.shape[-3:-1], policy=policy, kernel_size=kernel_size,
                      multiple=multiple)
  out = fn(pad(frame0, plan), pad(frame1, plan))
  return jax.tree.map(lambda leaf: crop(leaf, plan), out)
