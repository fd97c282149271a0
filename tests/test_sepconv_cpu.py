"""The compiled CPU kernels (`pallas_kernels.sepconv_cpu`) against the plain-JAX reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from pallas_kernels import sepconv_cpu as cpu
from pallas_kernels.reference import sepconv_reference

pytestmark = pytest.mark.skipif(not cpu.cpu_kernel_available(),
                                reason=f"CPU kernels unavailable: "
                                       f"{cpu.cpu_kernel_unavailable_reason()}")

# (B, C, K, H, W): odd and even K, widths below, at and past multiples of the vector width (16 with
# AVX-512, 8 with AVX), heights that do and do not fill the forward kernel's 4-row bands.
CASES = [
    (2, 3, 1, 16, 33),
    (2, 1, 2, 16, 32),
    (2, 3, 2, 5, 7),
    (2, 1, 3, 16, 33),
    (2, 4, 3, 6, 17),   # two channel groups (3 + 1)
    (2, 3, 51, 20, 37),
    (2, 1, 51, 3, 5),
]


def _inputs(shape, dtype, seed=0):
  """Random arguments and cotangent, exactly representable in bfloat16, cast to `dtype`.

  Being bfloat16-exact, the float32 and bfloat16 tests share one (slow to compile) reference.
  """
  b, c, k, h, w = shape
  ks = jax.random.split(jax.random.key(seed), 4)
  shapes = ((b, c, h + k - 1, w + k - 1), (b, k, h, w), (b, k, h, w), (b, c, h, w))
  return tuple(jax.random.normal(key, s, jnp.float32).astype(jnp.bfloat16).astype(dtype)
               for key, s in zip(ks, shapes))


def _vjp(fn, image, vertical, horizontal, cotangent):
  out, vjp = jax.vjp(fn, image, vertical, horizontal)
  return out, vjp(cotangent)


@functools.lru_cache(maxsize=None)
def _reference(shape):
  """Reference output and gradients (float32 numpy) for the inputs of `_inputs(shape, ...)`."""
  out, grads = jax.jit(functools.partial(_vjp, sepconv_reference))(*_inputs(shape, jnp.float32))
  return np.asarray(out), tuple(np.asarray(g) for g in grads)


def _assert_close(actual, expected, rel, what):
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  assert actual.shape == expected.shape, what
  scale = max(float(np.max(np.abs(expected))), 1e-6)
  err = float(np.max(np.abs(actual - expected))) / scale
  assert err <= rel, f"{what}: max |error| / max |expected| = {err:.3g} > {rel:g}"


@pytest.mark.parametrize("dtype,rel", [(jnp.float32, 1e-4), (jnp.bfloat16, 2e-2)],
                         ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "B{}C{}K{}H{}W{}".format(*s))
def test_forward_and_vjp_match_reference(shape, dtype, rel):
  image, vertical, horizontal, cotangent = _inputs(shape, dtype)
  out, grads = jax.jit(functools.partial(_vjp, cpu.sepconv_cpu))(image, vertical, horizontal,
                                                                cotangent)
  ref_out, ref_grads = _reference(shape)
  assert out.dtype == dtype
  _assert_close(out, ref_out, rel, "output")
  for name, arg, grad, ref in zip(("d_image", "d_vertical", "d_horizontal"),
                                  (image, vertical, horizontal), grads, ref_grads):
    assert grad.dtype == arg.dtype, name
    _assert_close(grad, ref, rel, name)


@pytest.mark.parametrize("shape", [(2, 3, 51, 20, 37), (2, 4, 3, 6, 17)],
                         ids=lambda s: "B{}C{}K{}H{}W{}".format(*s))
def test_bhwk_layout_matches_reference(shape):
  """Kernel maps (B, H, W, K), read natively: several bands, widths past a multiple of 16."""
  image, vertical, horizontal, cotangent = _inputs(shape, jnp.float32)
  to_bhwk = lambda a: jnp.moveaxis(a, 1, -1)
  fn = functools.partial(cpu.sepconv_cpu, kernel_layout="BHWK")
  out, grads = jax.jit(functools.partial(_vjp, fn))(image, to_bhwk(vertical), to_bhwk(horizontal),
                                                    cotangent)
  ref_out, (ref_image, ref_vertical, ref_horizontal) = _reference(shape)
  _assert_close(out, ref_out, 1e-4, "output")
  for name, grad, ref in zip(("d_image", "d_vertical", "d_horizontal"), grads,
                             (ref_image, to_bhwk(ref_vertical), to_bhwk(ref_horizontal))):
    _assert_close(grad, ref, 1e-4, name)
  with pytest.raises(ValueError, match="kernel_layout='NCHW'"):
    cpu.sepconv_cpu(image, vertical, horizontal, kernel_layout="NCHW")
  with pytest.raises(ValueError, match=r"\(B, H, W, K\)"):
    cpu.sepconv_cpu(image, vertical, horizontal, kernel_layout="BHWK")


def test_mixed_dtypes_promote():
  image, vertical, horizontal, _ = _inputs((1, 3, 3, 4, 5), jnp.float32)
  out = cpu.sepconv_cpu(image.astype(jnp.bfloat16), vertical, horizontal.astype(jnp.float16))
  assert out.dtype == jnp.float32
  grads = jax.grad(lambda i, v, h: cpu.sepconv_cpu(i, v, h).sum(), argnums=(0, 1, 2))(
      image.astype(jnp.bfloat16), vertical, horizontal.astype(jnp.float16))
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32, jnp.float16]


def test_numerical_gradients():
  image, vertical, horizontal, _ = _inputs((1, 2, 3, 3, 4), jnp.float32, seed=1)
  check_grads(cpu.sepconv_cpu, (image, vertical, horizontal), order=1, modes=("rev",),
              eps=1e-2, atol=5e-2, rtol=5e-2)


def test_jit_grad_of_loss():
  image, vertical, horizontal, target = _inputs((2, 3, 5, 6, 9), jnp.float32, seed=2)

  def loss(fn, image, vertical, horizontal):
    return jnp.mean((fn(image, vertical, horizontal) - target) ** 2)

  grad_fn = jax.jit(jax.grad(functools.partial(loss, cpu.sepconv_cpu), argnums=(0, 1, 2)))
  ref_fn = jax.jit(jax.grad(functools.partial(loss, sepconv_reference), argnums=(0, 1, 2)))
  for got, ref in zip(grad_fn(image, vertical, horizontal), ref_fn(image, vertical, horizontal)):
    _assert_close(got, ref, 1e-4, "jit(grad(loss))")


def test_bad_shapes_raise():
  image, vertical, horizontal, _ = _inputs((1, 3, 3, 4, 5), jnp.float32)
  with pytest.raises(ValueError):
    cpu.sepconv_cpu(image[:, :, 1:], vertical, horizontal)
  with pytest.raises(ValueError):
    cpu.sepconv_cpu(image, vertical, horizontal[:, :2])
