"""Shape validation shared by every implementation of the op."""

from __future__ import annotations

# Layouts of the kernel maps (and of their gradients): "BKHW" (taps on axis 1, the op's native
# layout) or "BHWK" (taps last, as an NHWC network emits them).
KERNEL_LAYOUTS = ("BKHW", "BHWK")
_MAP_AXES = {"BKHW": "(B, K, H, W)", "BHWK": "(B, H, W, K)"}


def check_kernel_layout(kernel_layout) -> str:
  """Returns `kernel_layout` if it is one of KERNEL_LAYOUTS, else raises ValueError naming it."""
  if not isinstance(kernel_layout, str) or kernel_layout not in KERNEL_LAYOUTS:
    raise ValueError(f"sepconv: kernel_layout={kernel_layout!r} must be one of {KERNEL_LAYOUTS}")
  return kernel_layout


def check_sepconv_shapes(image_shape, vertical_shape, horizontal_shape,
                         kernel_layout: str = "BKHW") -> tuple[int, int, int, int, int]:
  """Validates the op's argument shapes and returns (B, C, K, H, W).

  `kernel_layout` is "BKHW" (kernel maps (B, K, H, W)) or "BHWK" (kernel maps (B, H, W, K)).
  Raises ValueError naming the offending shapes and the expected layout: wrong rank, kernel maps
  that disagree with each other, or an image that is not the kernel maps' size padded by K - 1.
  """
  check_kernel_layout(kernel_layout)
  maps = _MAP_AXES[kernel_layout]
  layout_note = f"kernel_layout={kernel_layout!r}"
  image_shape, vertical_shape, horizontal_shape = map(tuple, (image_shape, vertical_shape,
                                                             horizontal_shape))
  for name, shape in (("image", image_shape), ("vertical", vertical_shape),
                      ("horizontal", horizontal_shape)):
    if len(shape) != 4:
      raise ValueError(f"sepconv: {name} must have rank 4, got {name}.shape={shape} "
                       f"(expected image (B, C, H+K-1, W+K-1), kernel maps {maps} with "
                       f"{layout_note})")
  if vertical_shape != horizontal_shape:
    raise ValueError(f"sepconv: kernel maps differ: vertical.shape={vertical_shape}, "
                     f"horizontal.shape={horizontal_shape} (both must be {maps} with "
                     f"{layout_note})")
  if kernel_layout == "BKHW":
    batch, k, height, width = vertical_shape
  else:
    batch, height, width, k = vertical_shape
  if k < 1 or height < 1 or width < 1:
    raise ValueError(f"sepconv: kernel maps must be non-empty, got vertical.shape={vertical_shape} "
                     f"(read as {maps} with {layout_note})")
  expected = (batch, image_shape[1], height + k - 1, width + k - 1)
  if image_shape[0] != batch or image_shape[2:] != expected[2:] or image_shape[1] < 1:
    raise ValueError(f"sepconv: image.shape={image_shape} does not match kernel maps "
                     f"vertical.shape={vertical_shape} (read as {maps} with {layout_note}, "
                     f"K={k}): expected (B, C, H+K-1, W+K-1) = "
                     f"({batch}, C, {height + k - 1}, {width + k - 1})")
  return batch, image_shape[1], k, height, width
