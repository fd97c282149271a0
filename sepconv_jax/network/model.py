"""The SepConv network (Niklaus et al., ICCV 2017) in Flax NNX.

Conventions
  Layout       NHWC everywhere in this module: frames (B, H, W, C), kernel maps (B, H, W, K).
               The separable local convolution takes NCHW images (`pallas_kernels`); the frames
               (3 channels, cheap) are converted in `local_separable_conv` and nowhere else. The
               kernel maps go to the op as they are (`kernel_layout="BHWK"`).
  Values       Frames in [0, 1], float32. The output is not clipped (the published network can
               overshoot slightly); clip when quantising.
  Channels     3 per frame, in the order the checkpoint records (`sepconv_jax.network.checkpoint`). The
               published weights (`network-l1.pytorch`, `network-lf.pytorch`) expect BGR; a freshly
               initialised model is order-agnostic and is trained and saved as RGB.
  Kernel maps  `vertical[b, y, x, i]` weights image row y + i - K//2 and `horizontal[b, y, x, j]`
               weights image column x + j - K//2 around output pixel (y, x): V indexes rows, H
               columns. There is one (vertical, horizontal) pair per input frame.
  Output       sepconv(pad(frame0), V0, H0) + sepconv(pad(frame1), V1, H1), where `pad` replicates
               the border by K//2 pixels, as the published network does. With
               `kernel_normalisation` (SepConv++) the sum is divided by the same sum computed on a
               channel of ones, i.e. by sum_i V_i * sum_j H_j summed over both frames (see
               `SepConvNet.__call__`).
  Precision    Parameters are float32. The convolutions run in `ConvOptions.precision`: "float32",
               or "bfloat16" (operands rounded to bfloat16, products accumulated in float32, on
               the CPU's bfloat16 units through oneDNN: `pallas_kernels.conv`); their results,
               the activations between them, the kernel maps and the output are float32 either
               way (except, with `ConvOptions.forward_only`, a result that only feeds the next
               convolution: bfloat16, the value that convolution reads). The default is the
               backend's faster accurate one (bfloat16 on CPUs where oneDNN's bfloat16 is
               measured faster: AMX, AMD's AVX512-BF16; `pallas_kernels.conv.default_precision`).
  Sizes        H and W must be multiples of 32 (five 2x2 poolings). Any frame size works through
               the padding policies of `sepconv_jax.network.padding`, which pad to a multiple of 128 and
               crop back; the network itself never asserts a maximum resolution.

Unaligned sources (`SepConvConfig(unaligned_sources=True)`; not in the published network): for
  pre-aligned input (`sepconv_jax.inference.alignment`), each frame arrives as 6 channels, the
  pre-aligned frame then the frame as captured. The encoder sees all 12 channels and four more
  subnets give kernels for the captured pair, so that where the optical flow went wrong the
  network can take its pixels from the frames the warp did not touch. The output sums the four
  sources (normalised over all four with `kernel_normalisation`). `with_unaligned_sources`
  turns a network without them into one with them that computes exactly what it did.
  `SepConvConfig(captured_input=True)` is the cheap half of it: the encoder sees the captured
  frames too (12 input channels), but kernels come only for the pre-aligned pair, so the network
  can use them to decide where the flow went wrong at almost no cost (one wider first layer);
  `with_captured_frames` extends a network to either.

Architecture (the published one with `SepConvConfig()`; `channels` scales it down for tests):
  encoder  5 stacks of three 3x3 conv + ReLU: 6 -> 32 -> 64 -> 128 -> 256 -> 512, each followed by
           2x2 average pooling.
  decoder  4 stacks 512 -> 512 -> 256 -> 128 -> 64, each followed by a bilinear x2 upsampling with
           align_corners=True and a 3x3 conv + ReLU; the matching encoder output is added before
           each stack and after the last one (at half resolution).
  subnets  4 (vertical/horizontal x frame 0/1): 3x3 conv 64 -> 64 -> 64 -> K with ReLUs, bilinear
           x2 (align_corners=True), 3x3 conv K -> K without activation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The op picks its fastest implementation for the backend (C++ kernel on CPU, Pallas on GPU), and
# so does the convolution (oneDNN on CPU, XLA elsewhere).
from pallas_kernels import sepconv
from pallas_kernels.conv import check_precision, conv2d, default_conv_impl, default_precision

# Five 2x2 poolings: the network only runs on sizes divisible by 2**5.
SIZE_MULTIPLE = 32

PUBLISHED_CHANNELS = (32, 64, 128, 256, 512)
PUBLISHED_KERNEL_SIZE = 51

# Kernel normalisation divides by the kernels' response to a channel of ones; where that response
# is nearly zero the division would blow up, so SepConv++ divides by 1 there instead.
_NORMALISATION_EPSILON = 0.01

# With unaligned sources, the encoder's input channels are frame 0 pre-aligned, frame 0 captured,
# frame 1 pre-aligned, frame 1 captured; subnets from this index on are the captured frames'.
ALIGNED_INPUT_CHANNELS = (slice(0, 3), slice(6, 9))
CAPTURED_INPUT_CHANNELS = (slice(3, 6), slice(9, 12))
FIRST_CAPTURED_SUBNET = 2

# "Start at frame averaging": the last conv of each subnet gets weights this small, so that its
# bias (a centred one-hot) dominates, while gradients still reach every layer from the first step.
_FRAME_AVERAGE_WEIGHT_STDDEV = 1e-4


@dataclasses.dataclass(frozen=True)
class SepConvConfig:
  """Hyper-parameters of the network. `SepConvConfig()` is the published architecture.

  Attributes:
    channels: Output channels of the five encoder stacks. The decoder mirrors them and the subnets
      use `channels[1]` hidden channels (64 in the published network).
    kernel_size: Taps K of each 1D kernel (51 published). Odd, so that the kernel has a centre.
    kernel_normalisation: Divide the output by the kernels' response to a channel of ones
      (SepConv++), which makes every output pixel a normalised weighted average of the inputs. Off
      for the published weights.
    frame_average_init: Initialise the last conv of each subnet so that the untrained network
      outputs the average of the two frames (kernels one-hot at the centre tap). Off by default,
      which is the plain Flax initialisation (LeCun normal weights, zero biases).
    unaligned_sources: Frames of 6 channels (pre-aligned, then as captured) and kernels for both
      (module docstring). Off in the published network.
    captured_input: Frames of 6 channels as with `unaligned_sources`, which only the encoder
      reads: kernels for the pre-aligned pair alone (module docstring). Not with
      `unaligned_sources`, which includes it.
  """
  channels: tuple[int, int, int, int, int] = PUBLISHED_CHANNELS
  kernel_size: int = PUBLISHED_KERNEL_SIZE
  kernel_normalisation: bool = False
  frame_average_init: bool = False
  unaligned_sources: bool = False
  captured_input: bool = False

  def __post_init__(self):
    # Accept lists (e.g. from JSON) but store a tuple so that the config stays hashable.
    object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
    if len(self.channels) != 5 or min(self.channels) < 1:
      raise ValueError(f"channels must be 5 positive ints, got {self.channels=}")
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size=}")
    if self.unaligned_sources and self.captured_input:
      raise ValueError("unaligned_sources includes captured_input: set one of them")

  @property
  def reads_captured_frames(self) -> bool:
    """Whether each input frame is 6 channels, pre-aligned then as captured."""
    return self.unaligned_sources or self.captured_input

  @property
  def frame_channels(self) -> int:
    """Channels of each input frame: 3, or 6 with `unaligned_sources` or `captured_input`."""
    return 6 if self.reads_captured_frames else 3

  @classmethod
  def scaled(cls, width: float, **overrides: Any) -> SepConvConfig:
    """The published channel widths multiplied by `width` (at least one channel each)."""
    channels = tuple(max(1, round(c * width)) for c in PUBLISHED_CHANNELS)
    return cls(channels=channels, **overrides)

  @classmethod
  def tiny(cls, **overrides: Any) -> SepConvConfig:
    """A few-thousand-parameter variant with K = 5, for fast tests."""
    return cls(**{"channels": (4, 8, 8, 8, 8), "kernel_size": 5, **overrides})

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly form, stored in checkpoint metadata."""
    return {**dataclasses.asdict(self), "channels": list(self.channels)}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> SepConvConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown SepConvConfig fields {sorted(unknown)}")
    return cls(**values)


class ConvOptions(NamedTuple):
  """How the network's convolutions run (`pallas_kernels.conv`): `precision` "float32" or
  "bfloat16" (bfloat16 operands, float32 accumulation and results; parameters stay float32) and
  `impl` "onednn" or "xla"; None picks each one's default for the backend.

  `forward_only` (inference; not for gradients): with bfloat16, a convolution whose result only
  feeds the next convolution (through a ReLU) writes it in bfloat16, the values that convolution
  rounds its operand to anyway: the same output at half the bytes between those layers. Under
  `grad` it would round those layers' cotangents to bfloat16 too, which training avoids."""
  precision: str | None = None
  impl: str | None = None
  forward_only: bool = False

  def resolved(self) -> ConvOptions:
    precision = check_precision(self.precision or default_precision())
    return ConvOptions(precision, self.impl or default_conv_impl(), self.forward_only)

  def result_dtype(self, feeds_conv: bool):
    """The dtype of a convolution's result: bfloat16 where `forward_only` lets it hand a
    bfloat16 operand to the next convolution (`feeds_conv`), float32 otherwise."""
    if feeds_conv and self.forward_only and self.precision == "bfloat16":
      return jnp.bfloat16
    return jnp.float32


class KernelMaps(NamedTuple):
  """The four per-pixel 1D kernels, each (B, H, W, K); index 0/1 is the frame they apply to."""
  vertical0: jax.Array
  horizontal0: jax.Array
  vertical1: jax.Array
  horizontal1: jax.Array


class Conv3x3(nnx.Module):
  """A 3x3 convolution with bias, zero padding 1 (the published 'SAME'), run by
  `pallas_kernels.conv2d` in the precision the call asks for.

  Its parameters are those of `nnx.Conv(in, out, kernel_size=(3, 3))`, drawn in the same order
  from the same initialisers: `kernel` (3, 3, in, out) HWIO and `bias` (out,), float32, so
  checkpoints are the same whatever the compute precision.
  """

  def __init__(self, in_features: int, out_features: int, rngs: nnx.Rngs, *,
               kernel_init=nnx.initializers.lecun_normal(), bias_init=nnx.initializers.zeros):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (3, 3, in_features, out_features),
                                        jnp.float32))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), jnp.float32))

  def __call__(self, x: jax.Array, options: ConvOptions = ConvOptions(), *, relu: bool = False,
               feeds_conv: bool = False) -> jax.Array:
    """The convolution, then ReLU if `relu`; `feeds_conv`: the result only goes into another
    convolution (see `ConvOptions.forward_only`)."""
    options = options.resolved()
    return conv2d(x, self.kernel[...], self.bias[...], precision=options.precision,
                  impl=options.impl, relu=relu, result_dtype=options.result_dtype(feeds_conv))



def average_pool2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2, NHWC; H and W must be even."""
  batch, height, width, channels = x.shape
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def _align_corners_taps(size_in: int, size_out: int):
  """Source indices and weights of 1D linear interpolation with align_corners=True."""
  if size_in == 1 or size_out == 1:
    zeros = np.zeros(size_out, np.int32)
    return zeros, zeros, np.zeros(size_out, np.float32)
  # align_corners=True maps the first and last samples onto each other exactly.
  source = np.arange(size_out, dtype=np.float64) * ((size_in - 1) / (size_out - 1))
  lower = np.minimum(np.floor(source).astype(np.int32), size_in - 1)
  upper = np.minimum(lower + 1, size_in - 1)
  return lower, upper, (source - lower).astype(np.float32)


def upsample2x_align_corners(x: jax.Array) -> jax.Array:
  """Bilinear x2 upsampling of an NHWC array with align_corners=True (PyTorch's semantics).

  `jax.image.resize` uses half-pixel centres (align_corners=False), which would not match the
  published weights, so the two linear passes are written out; indices are static.
  """
  for axis in (1, 2):
    lower, upper, fraction = _align_corners_taps(x.shape[axis], 2 * x.shape[axis])
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    fraction = jnp.asarray(fraction, x.dtype).reshape(shape)
    x = (jnp.take(x, lower, axis=axis) * (1 - fraction)
         + jnp.take(x, upper, axis=axis) * fraction)
  return x


class ConvStack(nnx.Module):
  """Three 3x3 convs, each followed by ReLU (the reference's `Basic`)."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.convs = nnx.List([
        Conv3x3(in_features, out_features, rngs),
        Conv3x3(out_features, out_features, rngs),
        Conv3x3(out_features, out_features, rngs),
    ])

  def __call__(self, x: jax.Array, options: ConvOptions = ConvOptions()) -> jax.Array:
    for index, conv in enumerate(self.convs):
      x = conv(x, options, relu=True, feeds_conv=index < len(self.convs) - 1)
    return x


class UpsampleConv(nnx.Module):
  """Bilinear x2 (align_corners=True), then a 3x3 conv + ReLU (the reference's `Upsample`)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs):
    self.conv = Conv3x3(features, features, rngs)

  def __call__(self, x: jax.Array, options: ConvOptions = ConvOptions()) -> jax.Array:
    return self.conv(upsample2x_align_corners(x), options, relu=True)


class KernelSubnet(nnx.Module):
  """Predicts one 1D kernel per output pixel from the half-resolution decoder features."""

  def __init__(self, in_features: int, kernel_size: int, *, frame_average_init: bool,
               rngs: nnx.Rngs):
    self.convs = nnx.List([
        Conv3x3(in_features, in_features, rngs),
        Conv3x3(in_features, in_features, rngs),
        Conv3x3(in_features, kernel_size, rngs),
    ])
    output_init = {}
    if frame_average_init:
      # A centred one-hot of height sqrt(1/2) in both the vertical and the horizontal kernel gives
      # an outer product of 1/2 at the centre tap, so each frame contributes half of itself.
      centre = np.zeros(kernel_size, np.float32)
      centre[kernel_size // 2] = math.sqrt(0.5)
      output_init = {
          "kernel_init": nnx.initializers.normal(_FRAME_AVERAGE_WEIGHT_STDDEV),
          "bias_init": lambda key, shape, dtype=jnp.float32: jnp.asarray(centre, dtype),
      }
    self.output_conv = Conv3x3(kernel_size, kernel_size, rngs, **output_init)

  def __call__(self, features: jax.Array, options: ConvOptions = ConvOptions()) -> jax.Array:
    x = features
    for index, conv in enumerate(self.convs):
      x = conv(x, options, relu=True, feeds_conv=index < len(self.convs) - 1)
    # The published subnets end without an activation: kernel weights may be negative.
    return self.output_conv(upsample2x_align_corners(x), options)


def local_separable_conv(frame: jax.Array, vertical: jax.Array,
                         horizontal: jax.Array) -> jax.Array:
  """The separable local convolution on NHWC arrays, with the published replicate padding.

  frame (B, H, W, C), vertical and horizontal (B, H, W, K) -> (B, H, W, C). This is the only place
  that changes layout: the op in `pallas_kernels` takes NCHW images, so the frame and the output
  (C channels) are transposed here. The kernel maps (K = 51 channels, 4 x 67 MB at 640x512) are
  not: the op reads them in this layout (`kernel_layout="BHWK"`; natively in the C++ CPU kernel,
  and its gradients come back in it), which saves four large layout copies per frame and their
  gradient counterparts in training.
  """
  half = vertical.shape[-1] // 2
  image = jnp.transpose(frame, (0, 3, 1, 2))
  # Replicate ("edge") padding, as the published network pads its inputs before the op.
  image = jnp.pad(image, ((0, 0), (0, 0), (half, half), (half, half)), mode="edge")
  out = sepconv(image, vertical, horizontal, kernel_layout="BHWK")
  return jnp.transpose(out, (0, 2, 3, 1))


class SepConvNet(nnx.Module):
  """The SepConv U-Net: two frames in, the frame halfway between them out (see module docstring)."""

  def __init__(self, config: SepConvConfig = SepConvConfig(), *, rngs: nnx.Rngs):
    self.config = config
    c1, c2, c3, c4, c5 = config.channels
    # Both frames enter together, concatenated on channels (3 + 3, or 6 + 6).
    self.encoder = nnx.List([
        ConvStack(2 * config.frame_channels, c1, rngs=rngs),
        ConvStack(c1, c2, rngs=rngs),
        ConvStack(c2, c3, rngs=rngs),
        ConvStack(c3, c4, rngs=rngs),
        ConvStack(c4, c5, rngs=rngs),
    ])
    # Deepest first: decoder[0] runs at 1/32 resolution, decoder[3] at 1/4.
    self.decoder = nnx.List([
        ConvStack(c5, c5, rngs=rngs),
        ConvStack(c5, c4, rngs=rngs),
        ConvStack(c4, c3, rngs=rngs),
        ConvStack(c3, c2, rngs=rngs),
    ])
    self.upsamplers = nnx.List([UpsampleConv(c, rngs=rngs) for c in (c5, c4, c3, c2)])
    # Index = the frame the kernels apply to: 0 and 1, then (unaligned sources) the captured
    # frames 0 and 1.
    subnet = lambda: KernelSubnet(c2, config.kernel_size,
                                  frame_average_init=config.frame_average_init, rngs=rngs)
    sources = 4 if config.unaligned_sources else 2
    self.vertical_subnets = nnx.List([subnet() for _ in range(sources)])
    self.horizontal_subnets = nnx.List([subnet() for _ in range(sources)])
    if config.frame_average_init and config.unaligned_sources:
      # Averaging the pre-aligned frames only: the captured frames' vertical kernels start at
      # zero (as in `with_unaligned_sources`), not at a second pair of one-hots.
      for captured in self.vertical_subnets[FIRST_CAPTURED_SUBNET:]:
        for variable in (captured.output_conv.kernel, captured.output_conv.bias):
          variable[...] = jnp.zeros_like(variable[...])

  def kernel_maps(self, frame0: jax.Array, frame1: jax.Array, *,
                  conv: ConvOptions = ConvOptions()) -> KernelMaps:
    """The four kernel maps, each (B, H, W, K), float32, for frames (B, H, W, C) with
    H, W % 32 == 0 and C = `config.frame_channels`; `conv` says how the convolutions run (default:
    the backend's fastest). With unaligned sources, those of the pre-aligned pair."""
    return self._source_kernel_maps(frame0, frame1, conv)[0]

  def _source_kernel_maps(self, frame0: jax.Array, frame1: jax.Array,
                          conv: ConvOptions) -> tuple[KernelMaps, ...]:
    """One KernelMaps per pair of sources: the frames (pre-aligned with unaligned sources), then
    with unaligned sources the captured frames."""
    channels = self.config.frame_channels
    for name, frame in (("frame0", frame0), ("frame1", frame1)):
      if frame.ndim != 4 or frame.shape[-1] != channels:
        raise ValueError(f"{name}.shape={frame.shape} must be (B, H, W, {channels})")
    if frame0.shape != frame1.shape:
      raise ValueError(f"frames differ in shape: {frame0.shape=}, {frame1.shape=}")
    height, width = frame0.shape[1:3]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
      raise ValueError(f"{height=} and {width=} must be multiples of {SIZE_MULTIPLE}; pad with "
                       "sepconv_jax.network.padding (policies 'paper' and 'improved') for other sizes")

    # Resolved once here (not in every layer), so that one call's layers all run alike.
    conv = conv.resolved()
    x = jnp.concatenate([frame0, frame1], axis=-1)
    skips = []
    for stack in self.encoder:
      x = stack(x, conv)
      skips.append(x)
      x = average_pool2x(x)
    # skips[4] (1/16 res) joins after decoder[0], ..., skips[1] (1/2 res) after decoder[3].
    for stack, upsample, skip in zip(self.decoder, self.upsamplers, reversed(skips[1:])):
      x = upsample(stack(x, conv), conv) + skip
    maps = [(vertical(x, conv), horizontal(x, conv))
            for vertical, horizontal in zip(self.vertical_subnets, self.horizontal_subnets)]
    return tuple(KernelMaps(*maps[i], *maps[i + 1]) for i in range(0, len(maps), 2))

  def __call__(self, frame0: jax.Array, frame1: jax.Array, *, conv: ConvOptions = ConvOptions(),
               return_kernels: bool = False) -> jax.Array | tuple[jax.Array, KernelMaps]:
    """Interpolates the frame halfway between `frame0` and `frame1`.

    Args:
      frame0, frame1: (B, H, W, 3) in [0, 1], H and W multiples of 32, channel order as the
        checkpoint records; with unaligned sources (B, H, W, 6): pre-aligned, then as captured.
      conv: How the convolutions run: compute precision and implementation (`ConvOptions`;
        default: the backend's fastest accurate choice). The kernel maps, the separable local
        convolution and the output are float32 in every precision.
      return_kernels: Also return the four kernel maps (for inspection and kernel losses).

    Returns:
      The frame (B, H, W, 3), or (frame, KernelMaps) with `return_kernels` (with unaligned
      sources, the pre-aligned pair's).
    """
    source_maps = self._source_kernel_maps(frame0, frame1, conv)
    # (frame, vertical, horizontal) per source; with unaligned sources the first three channels
    # of each frame are the pre-aligned ones, the last three the captured ones.
    sources = []
    for index, maps in enumerate(source_maps):
      channels = slice(3 * index, 3 * index + 3)
      sources += [(frame0[..., channels], maps.vertical0, maps.horizontal0),
                  (frame1[..., channels], maps.vertical1, maps.horizontal1)]
    total = sum(local_separable_conv(frame, v, h) for frame, v, h in sources)
    if self.config.kernel_normalisation:
      # The op's response to a channel of ones (replicate-padded: ones everywhere) is the sum of
      # the weights each pixel sees, sum_i V_i * sum_j H_j for each source: computed directly, it
      # costs nothing, where a fourth channel through the op would cost a third more.
      weight_sum = sum(jnp.sum(v, axis=-1, keepdims=True) * jnp.sum(h, axis=-1, keepdims=True)
                       for _, v, h in sources)
      weight_sum = jnp.where(jnp.abs(weight_sum) < _NORMALISATION_EPSILON, 1.0, weight_sum)
      total = total / weight_sum
    return (total, source_maps[0]) if return_kernels else total


def with_unaligned_sources(model: SepConvNet) -> SepConvNet:
  """`with_captured_frames` to the same network with unaligned sources."""
  return with_captured_frames(model, dataclasses.replace(model.config, unaligned_sources=True))


def with_captured_frames(model: SepConvNet, config: SepConvConfig) -> SepConvNet:
  """A network of `config` (`model`'s, with unaligned sources or captured input) that computes
  exactly what `model` (without either) does on the pre-aligned frames, whatever the captured
  ones: the encoder's first convolution gets zero weights for the captured frames' channels, and
  with unaligned sources the captured frames' kernels start as copies of the pre-aligned frames'
  with the vertical ones zero (a product that is zero, which lets the gradient reach both: zero
  in both would hold them there)."""
  if model.config.reads_captured_frames:
    raise ValueError("the network already reads the captured frames")
  if not config.reads_captured_frames or config != dataclasses.replace(
      model.config, unaligned_sources=config.unaligned_sources,
      captured_input=config.captured_input):
    raise ValueError(f"{config} is not the network {model.config} with the captured frames")
  target = nnx.eval_shape(lambda: SepConvNet(config, rngs=nnx.Rngs(0)))
  source_state = nnx.state(model, nnx.Param)
  state = nnx.state(target, nnx.Param)
  flat_source = dict(nnx.to_flat_state(source_state))
  new = {}
  for path, variable in nnx.to_flat_state(state):
    if path in flat_source:
      value = flat_source[path][...]
      if path[:4] == ("encoder", 0, "convs", 0) and path[-1] == "kernel":
        # The frames' input weights go to the pre-aligned frames' channels, zeros elsewhere.
        kernel = jnp.zeros(variable.shape, value.dtype)
        for channels, frame in zip(ALIGNED_INPUT_CHANNELS, (slice(0, 3), slice(3, 6))):
          kernel = kernel.at[:, :, channels].set(value[:, :, frame])
        value = kernel
    else:  # a captured frame's subnet: a copy of the pre-aligned frame's (its own buffer, so
      # that a training step may donate both)
      name, index = path[0], path[1]
      value = jnp.array(flat_source[(name, index - FIRST_CAPTURED_SUBNET) + path[2:]][...],
                        copy=True)
      if name == "vertical_subnets" and path[2] == "output_conv":
        value = jnp.zeros_like(value)
    if value.shape != variable.shape:
      raise ValueError(f"parameter {path}: {value.shape} where {variable.shape} is expected")
    new[path] = value
  graphdef, _ = nnx.split(target)
  return nnx.merge(graphdef, nnx.from_flat_state(
      [(path, nnx.Param(value)) for path, value in new.items()]))


def count_parameters(config: SepConvConfig = SepConvConfig()) -> int:
  """Number of trainable parameters, counted on abstract shapes (allocates nothing)."""
  abstract = nnx.eval_shape(lambda: SepConvNet(config, rngs=nnx.Rngs(0)))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
