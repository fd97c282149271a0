"""The evaluation loop: a predictor over a set's triplets, scored per item and averaged.

Conventions
  Timing    Seconds of one `predict` call per item (the result fetched to the host), after an
            untimed warm-up call on the first item of each frame size, so that jit compilation is
            not counted. Reading frames and computing metrics are not counted either.

Metrics as `sepconv_jax.evaluation.scoring` defines them; predictors are passed in (no jax here).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Iterable

import numpy as np

from sepconv_jax.evaluation import kernels as kernel_stats
from sepconv_jax.evaluation.datasets import EvaluationError, Triplet
from sepconv_jax.evaluation.scoring import (MOTION_BUCKETS, SSIM_GAUSSIAN_LABEL, SSIM_LABEL,
                                            motion_from_flows, motion_magnitude, psnr,
                                            psnr_from_squared_error, psnr_masked,
                                            squared_error_by_motion, ssim, ssim_gaussian,
                                            to_uint8)


@dataclasses.dataclass
class ItemResult:
  """Scores of one item (metrics as in the module docstring) and the seconds its prediction took."""
  name: str
  psnr: float
  ssim: float
  seconds: float
  ssim_gaussian: float | None = None
  psnr_masked: float | None = None
  psnr_motion: dict[str, float | None] | None = None  # by MOTION_BUCKETS name
  # By MOTION_BUCKETS name, `squared_error_by_motion` (additive: pooled over a set).
  motion_error: dict[str, tuple[float, int]] | None = None
  # By MOTION_BUCKETS name, `kernels.kernel_sums` (additive: a set's statistics come from totals).
  kernel_sums: dict[str, dict[str, float]] | None = None

  def to_json(self) -> dict:
    out = {"psnr": self.psnr, "ssim": self.ssim, "seconds": self.seconds}
    if self.ssim_gaussian is not None:
      out["ssim_gaussian"] = self.ssim_gaussian
    if self.psnr_masked is not None:
      out["psnr_masked"] = self.psnr_masked
    if self.psnr_motion is not None:
      out["psnr_motion"] = self.psnr_motion
    if self.kernel_sums is not None:
      out["kernels"] = kernel_stats.kernel_statistics(self.kernel_sums)
    return out


def _mean(values: Iterable[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.fmean(values) if values else None


@dataclasses.dataclass
class Report:
  """Per-item results of one evaluation and their means."""
  dataset: str
  model: str
  items: list[ItemResult]
  gaussian_ssim: bool = False
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def psnr(self) -> float | None:
    return _mean(item.psnr for item in self.items)

  @property
  def ssim(self) -> float | None:
    return _mean(item.ssim for item in self.items)

  @property
  def ssim_gaussian(self) -> float | None:
    return _mean(item.ssim_gaussian for item in self.items)

  @property
  def psnr_masked(self) -> float | None:
    """Mean over the items that have a masked PSNR (see the module docstring)."""
    return _mean(item.psnr_masked for item in self.items)

  @property
  def masked_count(self) -> int:
    return sum(item.psnr_masked is not None for item in self.items)

  @property
  def seconds_per_frame(self) -> float | None:
    return _mean(item.seconds for item in self.items)

  @property
  def psnr_motion(self) -> dict[str, float | None] | None:
    """Per motion bucket, the mean over the items with pixels in it; None without motion."""
    scored = [item.psnr_motion for item in self.items if item.psnr_motion is not None]
    if not scored:
      return None
    return {name: _mean(values.get(name) for values in scored) for name, _, _ in MOTION_BUCKETS}

  @property
  def psnr_motion_pooled(self) -> dict[str, float | None] | None:
    """Per motion bucket, the PSNR of all the items' pixels in it together (their mean squared
    error): steadier than `psnr_motion` where a bucket holds few pixels of some items, whose PSNR
    swings by decibels (an item weighs by its pixels, not one vote each); None without motion."""
    errors = [item.motion_error for item in self.items if item.motion_error is not None]
    if not errors:
      return None
    return {name: psnr_from_squared_error(sum(e[name][0] for e in errors),
                                          sum(e[name][1] for e in errors))
            for name, _, _ in MOTION_BUCKETS}

  @property
  def kernels(self) -> dict[str, dict[str, float | None]] | None:
    """`kernels.kernel_statistics` over all items' pixels together; None without kernels."""
    sums = [item.kernel_sums for item in self.items if item.kernel_sums is not None]
    return kernel_stats.kernel_statistics(kernel_stats.add_sums(sums)) if sums else None

  def to_json(self) -> dict:
    out = {"dataset": self.dataset, "model": self.model, "psnr": self.psnr, "ssim": self.ssim,
           "count": len(self.items), "seconds_per_frame": self.seconds_per_frame,
           "metrics": {"psnr": "RGB uint8 (rounded), data range 255, whole frame",
                       "ssim": SSIM_LABEL}}
    if self.gaussian_ssim:
      out["ssim_gaussian"] = self.ssim_gaussian
      out["metrics"]["ssim_gaussian"] = SSIM_GAUSSIAN_LABEL
    if self.masked_count:
      out["psnr_masked"] = self.psnr_masked
      out["masked_count"] = self.masked_count
      out["metrics"]["psnr_masked"] = ("PSNR inside the motion region (black pixels of "
                                        "motion_mask.png), DVF's formula")
    if self.psnr_motion is not None:
      out["psnr_motion"] = self.psnr_motion
      out["metrics"]["psnr_motion"] = ("PSNR over the pixels whose motion (larger |DIS flow| from "
                                       "the true middle frame to an input frame) is in each "
                                       "bucket, the mean over the items")
      out["psnr_motion_pooled"] = self.psnr_motion_pooled
      out["metrics"]["psnr_motion_pooled"] = ("the same buckets' PSNR over all the items' pixels "
                                              "together (the set's mean squared error)")
    if self.kernels is not None:
      out["kernels"] = self.kernels
      out["metrics"]["kernels"] = ("per motion bucket, over both frames' pixels with a trusted "
                                   "flow: followed = sum(centroid . flow) / sum(|flow|^2), "
                                   "error = mean |centroid - flow| px, spread = mean kernel "
                                   "spread px (sepconv_jax.evaluation.kernels)")
    out.update(self.info)
    out["per_item"] = {item.name: item.to_json() for item in self.items}
    return out


Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (first, second) -> (vertical0, horizontal0, vertical1, horizontal1), each (H, W, K).
KernelSource = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]]


def evaluate(triplets: Iterable[Triplet], predict: Predictor, *, dataset: str, model: str,
             gaussian_ssim: bool = False, warmup: bool = True, limit: int | None = None,
             on_item: Callable[[ItemResult], None] | None = None, info: dict | None = None,
             motion: bool = False, kernels: KernelSource | None = None) -> Report:
  """Scores `predict(first, second) -> (H, W, 3) uint8` on every triplet.

  Args:
    triplets: From a reader (`sepconv_jax.evaluation.datasets.read_dataset`).
    predict: A model's predictor (e.g. an `Interpolator`) or one of `scoring.BASELINES`.
    dataset, model: Names recorded in the report.
    gaussian_ssim: Also compute the 11x11-Gaussian SSIM.
    warmup: Call `predict` once untimed on the first item of each frame size (jit compilation).
    limit: Stop after this many items.
    on_item: Called with each item's result as soon as it is scored (progress, tables).
    info: Extra JSON-serialisable facts for the report (padding, root, ...).
    motion: Also score PSNR by motion magnitude (`psnr_by_motion`; optical flow per item, not
      timed).
    kernels: The model's kernel maps for a pair (e.g. `Interpolator.kernel_maps`): also measure
      how far they follow the motion (`sepconv_jax.evaluation.kernels`; optical flow per item,
      not timed).
  """
  results: list[ItemResult] = []
  seen_shapes: set[tuple[int, ...]] = set()
  for triplet in triplets:
    if limit is not None and len(results) >= limit:
      break
    if triplet.first.shape != triplet.second.shape or triplet.first.shape != triplet.truth.shape:
      raise EvaluationError(f"{triplet.name}: frames differ in size ({triplet.first.shape}, "
                            f"{triplet.second.shape}, truth {triplet.truth.shape})")
    if warmup and triplet.first.shape not in seen_shapes:
      np.asarray(predict(triplet.first, triplet.second))
      seen_shapes.add(triplet.first.shape)
    start = time.perf_counter()
    prediction = np.asarray(predict(triplet.first, triplet.second))
    seconds = time.perf_counter() - start
    flows = None if kernels is None else _middle_flows(triplet)
    motion_error = None
    if motion:  # from the kernels' flows when there are some: the same DIS flows, computed once
      motion_map = (motion_magnitude(triplet.first, triplet.second, triplet.truth)
                    if flows is None else motion_from_flows(flows[0], flows[2]))
      motion_error = squared_error_by_motion(prediction, triplet.truth, motion_map)
    result = ItemResult(
        name=triplet.name, psnr=psnr(prediction, triplet.truth),
        ssim=ssim(prediction, triplet.truth), seconds=seconds,
        ssim_gaussian=ssim_gaussian(prediction, triplet.truth) if gaussian_ssim else None,
        psnr_masked=(None if triplet.mask is None
                     else psnr_masked(prediction, triplet.truth, triplet.mask)),
        psnr_motion=None if motion_error is None else {
            name: psnr_from_squared_error(*sums) for name, sums in motion_error.items()},
        motion_error=motion_error,
        kernel_sums=None if kernels is None else kernel_stats.kernel_sums(
            [np.asarray(m) for m in kernels(triplet.first, triplet.second)], *flows))
    results.append(result)
    if on_item is not None:
      on_item(result)
  if not results:
    raise EvaluationError(f"no items to evaluate in the {dataset} set")
  return Report(dataset=dataset, model=model, items=results, gaussian_ssim=gaussian_ssim,
                info=dict(info or {}))


def _middle_flows(triplet: Triplet) -> tuple[np.ndarray, ...]:
  """`sepconv_data.flow.middle_flows` of a triplet: (flow0, valid0, flow1, valid1)."""
  from sepconv_data.flow import middle_flows  # OpenCV's DIS  # pylint: disable=import-outside-toplevel
  return middle_flows(to_uint8(triplet.first), to_uint8(triplet.truth), to_uint8(triplet.second))
