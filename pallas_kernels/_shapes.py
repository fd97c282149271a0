"""Shape validation shared by every implementation of the op."""

from __future__ import annotations


def check_sepconv_shapes(image_shape, vertical_shape, horizontal_shape) -> tuple[int, int, int, int, int]:
  """Validates the op's argument shapes and returns (B, C, K, H, W).

  Raises ValueError naming the offending shapes: wrong rank, kernel maps that disagree with each
  other, or an image that is not the kernel maps' size padded by K - 1.
  """
  image_shape, vertical_shape, horizontal_shape = map(tuple, (image_shape, vertical_shape,
                                                             horizontal_shape))
  for name, shape in (("image", image_shape), ("vertical", vertical_shape),
                      ("horizontal", horizontal_shape)):
    if len(shape) != 4:
      raise ValueError(f"sepconv: {name} must have rank 4, got {name}.shape={shape} "
                       "(expected image (B, C, H+K-1, W+K-1), kernel maps (B, K, H, W))")
  if vertical_shape != horizontal_shape:
    raise ValueError(f"sepconv: kernel maps differ: vertical.shape={vertical_shape}, "
                     f"horizontal.shape={horizontal_shape} (both must be (B, K, H, W))")
  batch, k, height, width = vertical_shape
  if k < 1 or height < 1 or width < 1:
    raise ValueError(f"sepconv: kernel maps must be non-empty, got vertical.shape={vertical_shape}")
  expected = (batch, image_shape[1], height + k - 1, width + k - 1)
  if image_shape[0] != batch or image_shape[2:] != expected[2:] or image_shape[1] < 1:
    raise ValueError(f"sepconv: image.shape={image_shape} does not match kernel maps "
                     f"vertical.shape={vertical_shape}: expected (B, C, H+K-1, W+K-1) = "
                     f"({batch}, C, {height + k - 1}, {width + k - 1})")
  return batch, image_shape[1], k, height, width
