"""How far a model's kernels follow motion whose size is known: the street pair's SUV and
synthetic rigid objects pasted over held-out crops.

  python benchmarks/kernel_following.py [--model CHECKPOINT] [--data datasets/davis_tfds_g12]

"followed" is `sepconv_jax.evaluation.kernels`' least-squares share of the motion the kernel
centroids follow (1: fully, 0: in place, as frame averaging does), both frames together.

- SUV: `samples/street_*.png`; the pixels whose DIS flow from the first frame to the second
  exceeds 25 px (the SUV, about 37 px), each frame's target half that flow (a rigid object moving
  evenly, approximated at the first frame's pixels).
- Objects: `sepconv_data.pipeline.paste_object` over the centre crops (`--crop`, 128) of the first
  `--crops` patches of the cache's validation split, one object each with `random_object`'s
  draws (fixed seed): exact motion, 2 to 24 px from the middle frame; followed and PSNR inside
  each object (away from its edge), by the object's shift.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from sepconv_jax.evaluation import scoring
from sepconv_jax.evaluation.kernels import kernel_sums
from sepconv_jax.inference import media
from sepconv_jax.inference.interpolator import Interpolator

SUV_FLOW_PX = 25.0
SEED = 77
BUCKETS = ((0.0, 8.0, "<=8px"), (8.0, 16.0, "8-16px"), (16.0, np.inf, ">16px"))


def followed(maps, flow0: np.ndarray, flow1: np.ndarray, region: np.ndarray) -> float:
  """The share of the flows ((H, W, 2) to frame 0 and to frame 1) that the kernel centroids
  follow over `region` (H, W), both frames and every motion bucket of `kernel_sums` together."""
  sums = kernel_sums(maps, flow0, region, flow1, region).values()
  return sum(b["dot"] for b in sums) / max(sum(b["flow_squared"] for b in sums), 1e-12)


def suv(interpolator: Interpolator) -> str:
  from sepconv_data import flow  # pylint: disable=import-outside-toplevel
  first = media.read_image(ROOT / "samples" / "street_0.png")
  second = media.read_image(ROOT / "samples" / "street_1.png")
  motion = flow.dis_flow(first, second)
  region = np.linalg.norm(motion, axis=-1) > SUV_FLOW_PX
  share = followed(interpolator.kernel_maps(first, second), -motion / 2, motion / 2, region)
  half = float(np.linalg.norm(motion[region], axis=-1).mean() / 2)
  return (f"street SUV ({int(region.sum())} px moving {2 * half:.1f} px, {half:.1f} from the "
          f"middle): followed {share:.2f}")


def objects(interpolator: Interpolator, data: str, count: int, size: int) -> list[str]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from sepconv_data import pipeline  # pylint: disable=import-outside-toplevel
  patches = pipeline.read_split(data, "validation").take(count).as_numpy_iterator()
  frames, placements = [], []
  for index, example in enumerate(patches):
    crop = tf.cast(pipeline.center_crop(pipeline.stack_frames(example), size), tf.float32) / 255.0
    placed = pipeline.random_object(pipeline.element_seed(SEED, 0, index), size)
    frames.append(pipeline.paste_object(crop, *placed).numpy())
    placements.append([t.numpy() for t in placed])
  if not frames:
    raise SystemExit(f"error: no validation patches in {data}")
  frames = np.stack(frames)
  x0, y, x1 = frames[:, 0], frames[:, 1], frames[:, 2]
  maps = interpolator.kernel_maps(x0, x1)
  prediction = np.asarray(interpolator(x0, x1))
  rows = {name: [] for *_, name in BUCKETS}
  for index, (center, radii, shift) in enumerate(placements):
    core = pipeline.object_mask(size, center, radii).numpy() >= 1.0
    # (dx, dy) from the middle frame to x1, everywhere (only the object's core is scored).
    motion = np.broadcast_to(np.array([shift[1], shift[0]], np.float64), (size, size, 2))
    share = followed([m[index] for m in maps], -motion, motion, core)
    psnr = scoring.psnr_masked(prediction[index], y[index], core) or scoring.MAX_PSNR
    name = next(n for low, high, n in BUCKETS if low < np.hypot(*shift) <= high)
    rows[name].append((share, psnr))
  lines = [f"synthetic objects on {len(frames)} held-out {size}x{size} crops of {data}:",
           f"{'shift':<8} {'objects':>7} {'followed':>9} {'PSNR':>7}"]
  for name, values in rows.items():
    if values:
      share, psnr = np.mean(values, axis=0)
      lines.append(f"{name:<8} {len(values):>7} {share:>9.2f} {psnr:>7.2f}")
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", help="checkpoint (default: the shipped model)")
  parser.add_argument("--data", default="datasets/davis_tfds_g12",
                      help="a prepared cache (sepconv prepare) for the synthetic objects; "
                           "'none' skips them")
  parser.add_argument("--crops", type=int, default=48, help="synthetic objects (default 48)")
  parser.add_argument("--crop", type=int, default=128, help="their crop side (default 128)")
  args = parser.parse_args(argv)
  # The network alone: its kernels against the whole motion (no pre-alignment).
  interpolator = (Interpolator.default(align=0.0) if args.model is None
                  else Interpolator.from_checkpoint(args.model, align=0.0))
  print(f"model: {args.model or 'default'}")
  print(suv(interpolator))
  if args.data != "none":
    from sepconv_data.builder import CacheError  # pylint: disable=import-outside-toplevel
    try:
      print("\n".join(objects(interpolator, args.data, args.crops, args.crop)))
    except CacheError as error:
      raise SystemExit(f"error: {error}") from None
  return 0


if __name__ == "__main__":
  sys.exit(main())
