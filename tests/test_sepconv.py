"""The separable local convolution: every implementation against the reference, forward and VJP,
the reference against brute force, numerical gradients, shape errors, and the CUDA lowering."""

from __future__ import annotations

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pallas_kernels
from pallas_kernels import BlockSizes, sepconv, sepconv_cpu, sepconv_reference

# (B, C, K, H, W): K in {1, 3, 51}; sizes that do (16x32) and do not (19x37, 9x21) fill whole tiles,
# and one that spans several tiles in both directions (40x70 with 16x32 tiles).
CASES = [
    (2, 3, 1, 16, 32),
    (2, 1, 3, 19, 37),
    (2, 1, 3, 40, 70),
    (2, 3, 51, 16, 16),
    (2, 3, 51, 9, 21),
]
# Tolerance relative to the largest reference magnitude. bfloat16 results are rounded to 8 bits of
# mantissa (the float32 accumulation is shared with the reference, so the rounding dominates).
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 1.6e-2}
FAST_IMPLS = ("pallas", "xla", "cpu")


def _operands(batch, channels, k, height, width, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  image = jax.random.uniform(keys[0], (batch, channels, height + k - 1, width + k - 1))
  # SepConv's kernel maps are of either sign and O(1/K) in size.
  vertical = jax.random.normal(keys[1], (batch, k, height, width)) / k
  horizontal = jax.random.normal(keys[2], (batch, k, height, width)) / k
  return tuple(a.astype(dtype) for a in (image, vertical, horizontal))


def _runs_here(impl: str) -> bool:
  """Whether `impl` can run on this machine. The C++ kernel cannot without a compiler (or with no
  writable cache at all): then asking for it must raise the clear error, the default must be plain
  XLA, and the test checks that instead of the kernel's numbers."""
  if impl != "cpu" or sepconv_cpu.cpu_kernel_available():
    return True
  with pytest.raises(RuntimeError, match=r"C\+\+ CPU kernel is unavailable .*impl='xla'"):
    sepconv(*_operands(1, 1, 3, 4, 4), impl="cpu")
  assert jax.default_backend() != "cpu" or pallas_kernels.default_impl() == "xla"
  return False


def _assert_close(actual, expected, tol, what):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape, what
  scale = max(float(np.abs(expected).max()), 1e-6)
  error = float(np.abs(actual - expected).max())
  assert error <= tol * scale, f"{what}: max abs error {error:.3g} > {tol} * {scale:.3g}"


def _brute_force(image, vertical, horizontal):
  image, vertical, horizontal = (np.asarray(a, np.float64) for a in (image, vertical, horizontal))
  batch, channels = image.shape[:2]
  k, height, width = vertical.shape[1:]
  out = np.zeros((batch, channels, height, width))
  for b, c, y, x in itertools.product(range(batch), range(channels), range(height), range(width)):
    for i, j in itertools.product(range(k), range(k)):
      out[b, c, y, x] += image[b, c, y + i, x + j] * vertical[b, i, y, x] * horizontal[b, j, y, x]
  return out


@pytest.mark.parametrize("case", [(1, 1, 1, 3, 2), (2, 3, 3, 4, 5), (1, 2, 4, 3, 3)])
def test_reference_matches_brute_force(case):
  operands = _operands(*case)
  _assert_close(sepconv_reference(*operands), _brute_force(*operands), 1e-6, f"{case}")


def test_reference_numerical_gradients():
  check_grads(sepconv_reference, _operands(1, 2, 3, 4, 5), order=1, modes=("rev",),
              atol=2e-2, rtol=2e-2, eps=1e-2)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}K{}_{}x{}".format(*c))
def test_forward_and_vjp_match_reference(impl, dtype, case, interpret):
  if not _runs_here(impl):
    return
  operands = _operands(*case, dtype=dtype)
  run = lambda *args: sepconv(*args, impl=impl, interpret=interpret)
  out, vjp = jax.vjp(run, *operands)
  expected, vjp_reference = jax.vjp(sepconv_reference, *operands)
  assert out.dtype == dtype
  tol = TOLERANCE[dtype]
  _assert_close(out, expected, tol, f"{impl} forward")

  cotangent = jax.random.normal(jax.random.PRNGKey(1), out.shape).astype(dtype)
  for name, grad, grad_reference in zip(("image", "vertical", "horizontal"), vjp(cotangent),
                                        vjp_reference(cotangent)):
    assert grad.dtype == dtype, name
    _assert_close(grad, grad_reference, tol, f"{impl} d {name}")


@pytest.mark.parametrize("impl", pallas_kernels.IMPLEMENTATIONS)
def test_grad_under_jit_reaches_all_arguments(impl):
  if not _runs_here(impl):
    return
  operands = _operands(2, 3, 3, 6, 5)
  loss = lambda *args: jnp.sum(sepconv(*args, impl=impl) ** 2)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*operands)
  expected = jax.grad(lambda *a: jnp.sum(sepconv_reference(*a) ** 2), argnums=(0, 1, 2))(*operands)
  for grad, grad_reference in zip(grads, expected):
    assert float(jnp.abs(grad).max()) > 0
    _assert_close(grad, grad_reference, 2e-5, impl)


def test_pallas_backward_reference_switch():
  operands = _operands(2, 1, 3, 5, 6)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), (2, 1, 5, 6))
  _, vjp_kernels = jax.vjp(lambda *a: sepconv(*a, impl="pallas"), *operands)
  _, vjp_reference = jax.vjp(lambda *a: sepconv(*a, impl="pallas", backward_impl="reference"),
                             *operands)
  for grad, grad_reference in zip(vjp_kernels(cotangent), vjp_reference(cotangent)):
    _assert_close(grad, grad_reference, 2e-5, "backward_impl")


def test_default_impl_on_cpu_is_a_fast_path():
  assert jax.default_backend() != "cpu" or pallas_kernels.default_impl() in ("cpu", "xla")
  assert pallas_kernels.default_impl("gpu") == "pallas"


@pytest.mark.parametrize("shapes, message", [
    (((1, 3, 20, 20), (1, 5, 16, 16), (1, 5, 16, 17)), r"vertical.shape=\(1, 5, 16, 16\)"),
    (((1, 3, 19, 20), (1, 5, 16, 16), (1, 5, 16, 16)), r"image.shape=\(1, 3, 19, 20\)"),
    (((2, 3, 20, 20), (1, 5, 16, 16), (1, 5, 16, 16)), r"image.shape=\(2, 3, 20, 20\)"),
    (((3, 20, 20), (1, 5, 16, 16), (1, 5, 16, 16)), r"image.shape=\(3, 20, 20\)"),
    (((1, 3, 20, 20), (5, 16, 16), (5, 16, 16)), r"vertical.shape=\(5, 16, 16\)"),
])
def test_bad_shapes_raise_value_error_naming_them(shapes, message):
  with pytest.raises(ValueError, match=message):
    sepconv(*(jnp.zeros(s) for s in shapes))


# (B, C, K, H, W): K = 51 at a width that is not a multiple of 16 (one full AVX-512 block and a
# partial one in the C++ kernel's transposes), and a small K = 3 case with two channel groups.
LAYOUT_CASES = [(1, 3, 51, 5, 21), (1, 4, 3, 6, 17)]


@pytest.mark.parametrize("impl, case", [
    (impl, case) for impl in pallas_kernels.IMPLEMENTATIONS for case in LAYOUT_CASES
    # The reference's layout handling is the same moveaxis as at K = 3; K = 51 only slows it.
    if not (impl == "reference" and case[2] == 51)
], ids=lambda value: value if isinstance(value, str) else "B{}C{}K{}_{}x{}".format(*value))
def test_bhwk_layout_matches_bkhw(impl, case, interpret):
  """kernel_layout="BHWK" gives the BKHW output, and the BKHW gradients moved to BHWK."""
  if not _runs_here(impl):
    return
  image, vertical, horizontal = _operands(*case)
  to_bhwk = lambda a: jnp.moveaxis(a, 1, -1)
  cotangent = jax.random.normal(jax.random.PRNGKey(2), case[:2] + case[3:])
  run = lambda layout: jax.jit(lambda *a: jax.vjp(
      lambda *b: sepconv(*b, impl=impl, interpret=interpret, kernel_layout=layout), *a)[1](
          cotangent) + (sepconv(*a, impl=impl, interpret=interpret, kernel_layout=layout),))
  *grads, out = run("BKHW")(image, vertical, horizontal)
  *grads_bhwk, out_bhwk = run("BHWK")(image, to_bhwk(vertical), to_bhwk(horizontal))
  _assert_close(out_bhwk, out, 1e-6, f"{impl} BHWK forward")
  _assert_close(grads_bhwk[0], grads[0], 1e-6, f"{impl} BHWK d image")
  for name, grad_bhwk, grad in zip(("vertical", "horizontal"), grads_bhwk[1:], grads[1:]):
    assert grad_bhwk.shape == to_bhwk(grad).shape, name
    _assert_close(grad_bhwk, to_bhwk(grad), 1e-6, f"{impl} BHWK d {name}")


@pytest.mark.parametrize("shapes, message", [
    # BKHW maps passed as BHWK: K is read from the last axis (16), so the image does not fit.
    (((1, 3, 20, 20), (1, 5, 16, 16), (1, 5, 16, 16)),
     r"image.shape=\(1, 3, 20, 20\).*vertical.shape=\(1, 5, 16, 16\).*\(B, H, W, K\)"),
    (((1, 3, 20, 20), (1, 16, 16, 5), (1, 16, 17, 5)),
     r"horizontal.shape=\(1, 16, 17, 5\).*\(B, H, W, K\).*'BHWK'"),
    (((1, 3, 20, 20), (16, 16, 5), (16, 16, 5)), r"vertical.shape=\(16, 16, 5\)"),
])
def test_bhwk_bad_shapes_name_them_and_the_layout(shapes, message):
  with pytest.raises(ValueError, match=message):
    sepconv(*(jnp.zeros(s) for s in shapes), kernel_layout="BHWK")
  # The same maps in BHWK are fine.
  assert sepconv(jnp.zeros((1, 3, 20, 20)), jnp.zeros((1, 16, 16, 5)), jnp.zeros((1, 16, 16, 5)),
                 kernel_layout="BHWK").shape == (1, 3, 16, 16)


def test_bad_kernel_layout_raises_value_error_naming_it():
  operands = _operands(1, 1, 3, 4, 4)
  for impl in FAST_IMPLS:
    for bad in ("NHWC", "bhwk", 1):
      with pytest.raises(ValueError, match=f"kernel_layout={bad!r}"):
        sepconv(*operands, impl=impl, kernel_layout=bad)


def test_bad_arguments_raise_value_error():
  operands = _operands(1, 1, 3, 4, 4)
  with pytest.raises(ValueError, match="impl='cuda'"):
    sepconv(*operands, impl="cuda")
  with pytest.raises(ValueError, match="backward_impl"):
    sepconv(*operands, backward_impl="triton")
  with pytest.raises(ValueError, match="image.dtype=int32"):
    sepconv(operands[0].astype(jnp.int32), *operands[1:])


def _triton_kernel_names(lowered_text):
  return sorted(re.findall(r'custom_call @__gpu\$xla\.gpu\.triton\(.*?name = "(\w+)"',
                           lowered_text))


def test_pallas_lowers_for_cuda_with_every_kernel():
  """Forward and gradient lower for CUDA on this CPU machine through the three Triton kernels, each
  exactly once: a silent fallback to the reference (or to XLA) would fail this."""
  batch, channels, k, height, width = 2, 3, 51, 48, 80
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
            ((batch, channels, height + k - 1, width + k - 1), (batch, k, height, width),
             (batch, k, height, width))]
  op = lambda *args: sepconv(*args, impl="pallas", interpret=False)
  forward_text = jax.jit(op).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
  assert _triton_kernel_names(forward_text) == ["sepconv_forward"]

  loss = lambda *args: jnp.mean(op(*args) ** 2)
  grad_text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*shapes).lower(
      lowering_platforms=("cuda",)).as_text()
  assert _triton_kernel_names(grad_text) == sorted([
      "sepconv_forward", "sepconv_backward_maps", "sepconv_backward_image"])


def test_pallas_kernels_read_bhwk_maps_without_a_transpose():
  """The network's layout goes into the kernels as it is: no transpose and no pad in the lowered
  forward and gradient programs, only the Triton calls; the kernels' structure halves (or
  better) the global loads per multiply-add of the first design."""
  batch, channels, k, height, width = 1, 3, 51, 40, 72
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
            ((batch, channels, height + k - 1, width + k - 1), (batch, height, width, k),
             (batch, height, width, k))]
  op = lambda *args: sepconv(*args, impl="pallas", interpret=False, kernel_layout="BHWK")
  text = jax.jit(op).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
  assert _triton_kernel_names(text) == ["sepconv_forward"]
  # (The kernels' serialized IR carries source locations, this test's name among them: look for
  # the ops themselves.)
  assert "stablehlo.transpose" not in text and "stablehlo.pad" not in text
  grad_text = jax.jit(jax.grad(lambda *a: jnp.sum(op(*a) ** 2), argnums=(0, 1, 2))).trace(
      *shapes).lower(lowering_platforms=("cuda",)).as_text()
  assert "stablehlo.transpose" not in grad_text and "stablehlo.pad" not in grad_text
  from pallas_kernels.sepconv_pallas import loads_per_multiply_add
  figures = {(kernel, design): loads_per_multiply_add(kernel, 51, 3, design)
             for kernel in ("forward", "backward_maps", "backward_image")
             for design in ("now", "first")}
  # The target: under 0.5 global loads per multiply-add.
  assert figures["forward", "now"] < 0.2 < 1.9 < figures["forward", "first"]
  assert figures["backward_maps", "now"] < 0.1 < 1.9 < figures["backward_maps", "first"]
  assert figures["backward_image", "now"] < 0.1 < 2.9 < figures["backward_image", "first"]
  assert 1.6 < loads_per_multiply_add("backward_image", 51, 3, "gather") < 1.7


def test_block_sizes_must_be_powers_of_two():
  with pytest.raises(ValueError, match="tile_w=24"):
    BlockSizes(tile_w=24)


def test_pallas_d_image_is_one_matrix_product_per_map_row(monkeypatch, capsys):
  """The d image kernel's reuse comes from a Triton matrix product (tile_h * CP rows of g x V
  products times the (span, tile_w) band of H's taps); a regression to per-tap gathers would
  lose it without failing any parity test. The other two kernels have no matrix product, so the
  gradient program's only `tt.dot` (in the kernels' debug print) is the d image kernel's."""
  from jax.experimental import pallas as pl  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(pl, "pallas_call", functools.partial(pl.pallas_call, debug=True))
  batch, channels, k, height, width = 1, 3, 51, 24, 40
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
            ((batch, channels, height + k - 1, width + k - 1), (batch, k, height, width),
             (batch, k, height, width))]
  loss = lambda *args: jnp.sum(sepconv(*args, impl="pallas", interpret=False) ** 2)
  jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*shapes).lower(lowering_platforms=("cuda",))
  dots = re.findall(r"tt\.dot .*: (tensor<\S+>) \* (tensor<\S+>)", capsys.readouterr().out)
  assert dots == [("tensor<32x128xf32>", "tensor<128x16xf32>")], dots
