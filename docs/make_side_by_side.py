"""Builds the README's side-by-side figure: frame averaging vs. the model on sample pairs.

  python docs/make_side_by_side.py                      # default model -> docs/side_by_side.jpg
  python docs/make_side_by_side.py --model CHECKPOINT --out figure.jpg [--align S] [--consensus W]

Each row is one pair: first frame | average of the two | the model's middle frame | second frame,
then the same four cropped around the spot where the model and averaging differ most, enlarged
2x (nearest neighbour, so no smoothing hides ghosts). Pairs: the shipped `samples/street_*.png`,
plus the shared sample pairs when `../shared/data/sample_pairs` is there.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sepconv_jax.inference import media  # pylint: disable=wrong-import-position
from sepconv_jax.inference.interpolator import Interpolator  # pylint: disable=wrong-import-position

SHARED_PAIRS = ROOT.parent / "shared" / "data" / "sample_pairs"
PANEL_HEIGHT = 256  # every panel is scaled to this height
ZOOM = 2
LABELS = ("first frame", "average", "SepConv", "second frame")


def pairs() -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  found = [("street (samples/)", ROOT / "samples" / "street_0.png",
            ROOT / "samples" / "street_1.png")]
  for name, first, second in (("Middlebury Mequon", "middlebury_mequon/one.png",
                               "middlebury_mequon/two.png"),
                              ("cyclist", "rife_demo/I1_0.png", "rife_demo/I1_1.png")):
    if (SHARED_PAIRS / first).is_file():
      found.append((name, SHARED_PAIRS / first, SHARED_PAIRS / second))
  return found


def _label(panel: np.ndarray, text: str) -> np.ndarray:
  panel = panel.copy()
  cv2.rectangle(panel, (0, 0), (8 + 9 * len(text), 22), (0, 0, 0), -1)
  cv2.putText(panel, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
              cv2.LINE_AA)
  return panel


def _fit(image: np.ndarray) -> np.ndarray:
  height, width = image.shape[:2]
  return cv2.resize(image, (round(width * PANEL_HEIGHT / height), PANEL_HEIGHT),
                    interpolation=cv2.INTER_AREA)


def row(name: str, images: list[np.ndarray], labels: tuple[str, ...] = LABELS) -> np.ndarray:
  """Two strips (full frames, then the 2x crops) for [first, average, model, second] (RGB uint8)."""
  average, model = images[1].astype(np.float32), images[2].astype(np.float32)
  difference = cv2.blur(np.abs(model - average).sum(axis=-1), (31, 31))
  height, width = difference.shape
  crop_h, crop_w = height // ZOOM, width // ZOOM  # same aspect: the crop strip is as wide
  y, x = np.unravel_index(np.argmax(difference), difference.shape)
  top = int(np.clip(y - crop_h // 2, 0, height - crop_h))
  left = int(np.clip(x - crop_w // 2, 0, width - crop_w))
  scale = PANEL_HEIGHT / height
  full, crops = [], []
  for i, (image, label) in enumerate(zip(images, labels)):
    panel = _label(_fit(image), f"{name}: {label}" if i == 0 else label)
    cv2.rectangle(panel, (round(left * scale), round(top * scale)),
                  (round((left + crop_w) * scale), round((top + crop_h) * scale)), (255, 64, 64), 1)
    full.append(panel)
    crop = cv2.resize(image[top:top + crop_h, left:left + crop_w], panel.shape[1::-1],
                      interpolation=cv2.INTER_NEAREST)
    crops.append(_label(crop, f"{label}, {ZOOM}x"))
  return np.concatenate([np.concatenate(full, axis=1), np.concatenate(crops, axis=1)], axis=0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", help="checkpoint directory (default: the default model)")
  parser.add_argument("--out", default=str(ROOT / "docs" / "side_by_side.jpg"))
  parser.add_argument("--align", type=float,
                      help="pre-alignment strength (default: the model's own, see the README)")
  parser.add_argument("--consensus", type=float,
                      help="consensus weight (default: the model's own, see the README)")
  args = parser.parse_args(argv)
  options = {"align": args.align, "consensus": args.consensus}
  interpolator = (Interpolator.from_checkpoint(args.model, **options) if args.model
                  else Interpolator.default(**options))
  model = "default model" if args.model is None else pathlib.Path(args.model).name
  model += f", pre-aligned {interpolator.align:g}" if interpolator.align else ""
  model += f", consensus {interpolator.consensus:g}" if interpolator.consensus else ""
  labels = (*LABELS[:2], f"{LABELS[2]} ({model})", LABELS[3])
  rows = []
  for name, first_path, second_path in pairs():
    first, second = media.read_image(first_path), media.read_image(second_path)
    average = np.round((first.astype(np.float32) + second) / 2).astype(np.uint8)
    rows.append(row(name, [first, average, interpolator(first, second), second], labels))
  width = max(r.shape[1] for r in rows)
  figure = np.concatenate([np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)),
                                  constant_values=255) for r in rows], axis=0)
  media.write_image(figure, args.out)
  print(f"wrote {args.out} ({figure.shape[1]}x{figure.shape[0]}, {len(rows)} pairs)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
