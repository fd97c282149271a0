"""The network's convolution (`pallas_kernels.conv`): every path against `lax.conv_general_dilated`
in float32, forward and all three gradients; bfloat16 against the same convolution of the
bfloat16-rounded operands (which pins "bf16 operands, float32 accumulation" exactly) and, looser,
against float32; numerical gradients; jit/vmap/shard_map; the fallback, the build cache, and the
CUDA lowering of the XLA path."""

from __future__ import annotations

import functools
import warnings
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from pallas_kernels import conv, conv_onednn

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ONEDNN = pytest.mark.skipif(not conv_onednn.onednn_available(),
                            reason=f"oneDNN unavailable: {conv_onednn.onednn_unavailable_reason()}")
IMPLS = [pytest.param("onednn", marks=ONEDNN), "xla"]

# (N, H, W, Ci, Co, KH, KW): odd sizes, batch > 1, the U-Net's 6-, 51- and 512-channel layers,
# a non-square kernel.
CASES = [
    (2, 7, 9, 6, 32, 3, 3),
    (1, 12, 10, 51, 51, 3, 3),
    (2, 3, 5, 512, 16, 3, 3),
    (3, 4, 4, 16, 512, 3, 3),
    (2, 6, 11, 5, 7, 5, 3),
]
# Largest |error| / largest |reference| allowed. bf16 vs float32 reflects rounding the operands
# (8 significant bits); against the rounded-operand reference only the summation order differs.
TOLERANCE = {"float32": 2e-5, "bfloat16": 2e-2, "bfloat16 vs rounded": 2e-5}


def _reference(x, kernel, bias):
  out = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
  return out + bias


def _operands(case, seed=0):
  n, h, w, ci, co, kh, kw = case
  keys = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(keys[0], (n, h, w, ci)),
          jax.random.normal(keys[1], (kh, kw, ci, co)) / np.sqrt(kh * kw * ci),
          jax.random.normal(keys[2], (co,)),
          jax.random.normal(keys[3], (n, h, w, co)))


def _value_and_grads(fn, x, kernel, bias, g):
  out, vjp = jax.vjp(fn, x, kernel, bias)
  return (out, *vjp(g))


def _assert_close(actual, expected, tolerance, what):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, what
  error = np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30)
  assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance:.0e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("precision", conv.PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_forward_and_gradients_match_lax_conv(impl, precision, case):
  x, kernel, bias, g = _operands(case)
  fn = functools.partial(conv.conv2d, precision=precision, impl=impl)
  results = jax.jit(functools.partial(_value_and_grads, fn))(x, kernel, bias, g)
  expected = _value_and_grads(_reference, x, kernel, bias, g)
  names = ("out", "d x", "d kernel", "d bias")
  for name, actual, wanted in zip(names, results, expected):
    assert actual.dtype == jnp.float32, name
    _assert_close(actual, wanted, TOLERANCE[precision], f"{impl} {precision} {name}")
  if precision == "bfloat16":
    # Exactly the float32 convolution of the rounded operands (and of the rounded cotangent for
    # d x and d kernel); the bias gradient sums the float32 cotangent.
    r = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
    out, d_x, d_kernel, _ = _value_and_grads(_reference, r(x), r(kernel), bias, r(g))
    for name, actual, wanted in zip(names, results, (out, d_x, d_kernel, jnp.sum(g, (0, 1, 2)))):
      _assert_close(actual, wanted, TOLERANCE["bfloat16 vs rounded"], f"{impl} {name} rounded")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("precision", conv.PRECISIONS)
def test_fused_relu_matches_relu_after_the_convolution(impl, precision):
  # The ReLU inside oneDNN's convolution and its gradient (0 where it clipped) against jax.nn.relu
  # after the plain convolution: the same values, bit for bit.
  x, kernel, bias, g = _operands((2, 7, 9, 6, 32, 3, 3))
  plain = functools.partial(conv.conv2d, precision=precision, impl=impl)
  fused = jax.jit(functools.partial(_value_and_grads, functools.partial(plain, relu=True)))
  expected = _value_and_grads(lambda *a: jax.nn.relu(plain(*a)), x, kernel, bias, g)
  actual = fused(x, kernel, bias, g)
  assert 0 < float(jnp.mean(actual[0] > 0)) < 1  # the ReLU clips some, not all
  for name, a, e in zip(("out", "d x", "d kernel", "d bias"), actual, expected):
    np.testing.assert_array_equal(a, e, err_msg=f"{impl} {precision} {name}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("relu", [False, True])
def test_bfloat16_result_is_the_rounded_float32_result(impl, relu):
  # What the next convolution reads: the float32 result (after the ReLU) rounded once.
  x, kernel, bias, _ = _operands((1, 12, 10, 51, 51, 3, 3))
  fn = functools.partial(conv.conv2d, precision="bfloat16", impl=impl, relu=relu)
  narrow = jax.jit(functools.partial(fn, result_dtype=jnp.bfloat16))(x, kernel, bias)
  assert narrow.dtype == jnp.bfloat16
  np.testing.assert_array_equal(narrow, fn(x, kernel, bias).astype(jnp.bfloat16))


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_result_needs_bfloat16_precision(impl):
  x, kernel, bias, _ = _operands((1, 4, 4, 3, 2, 3, 3))
  for precision, dtype in (("float32", jnp.bfloat16), ("bfloat16", jnp.float16)):
    with pytest.raises(ValueError, match="result_dtype"):
      conv.conv2d(x, kernel, bias, precision=precision, impl=impl, result_dtype=dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_numerical_gradients_float32(impl):
  x, kernel, bias, _ = _operands((1, 5, 6, 3, 4, 3, 3))
  fn = jax.jit(functools.partial(conv.conv2d, precision="float32", impl=impl))
  check_grads(fn, (x, kernel, bias), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_come_back_in_the_arguments_dtypes(impl):
  x, kernel, bias, g = _operands((1, 4, 4, 3, 2, 3, 3))
  out, d_x, d_kernel, d_bias = _value_and_grads(
      functools.partial(conv.conv2d, precision="bfloat16", impl=impl),
      x.astype(jnp.bfloat16), kernel, bias.astype(jnp.bfloat16), g)
  assert out.dtype == jnp.float32
  assert (d_x.dtype, d_kernel.dtype, d_bias.dtype) == (jnp.bfloat16, jnp.float32, jnp.bfloat16)


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_matches_a_loop(impl):
  x, kernel, bias, _ = _operands((3, 5, 4, 2, 3, 3, 3))
  fn = functools.partial(conv.conv2d, precision="float32", impl=impl)
  batched = jax.vmap(lambda a: fn(a[None], kernel, bias)[0])(x)
  np.testing.assert_allclose(batched, fn(x, kernel, bias), rtol=1e-5, atol=1e-5)


@ONEDNN
@pytest.mark.parametrize("precision", conv.PRECISIONS)
def test_concurrent_calls_share_the_thread_budget(precision):
  # Independent convolutions, which XLA runs at the same time, and their gradients, from several
  # Python threads at once: every call leases threads from one budget (waiting while none are
  # free), so none may hang or see another's threads, and each result is the one computed alone.
  import concurrent.futures  # pylint: disable=import-outside-toplevel
  cases = [(2, 9, 7, 6, 32, 3, 3), (1, 12, 10, 51, 51, 3, 3), (2, 6, 11, 5, 7, 5, 3)]
  fn = functools.partial(conv.conv2d, precision=precision, impl="onednn")
  operands = [_operands(case, seed) for seed, case in enumerate(cases)]
  together = jax.jit(lambda ops: [_value_and_grads(fn, *o) for o in ops])
  alone = [jax.jit(functools.partial(_value_and_grads, fn))(*o) for o in operands]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    runs = [pool.submit(lambda: jax.block_until_ready(together(operands))) for _ in range(4)]
    results = [run.result(timeout=300) for run in runs]
  for result in results:
    for case, actual, expected in zip(cases, result, alone):
      for a, e in zip(actual, expected):
        _assert_close(a, e, TOLERANCE["bfloat16 vs rounded"], f"{precision} {case}")


def test_rejects_bad_arguments():
  x, kernel, bias, _ = _operands((1, 4, 4, 3, 2, 3, 3))
  with pytest.raises(ValueError, match="do not fit"):
    conv.conv2d(x[..., :2], kernel, bias)
  with pytest.raises(ValueError, match="do not fit"):
    conv.conv2d(x, jnp.zeros((2, 2, 3, 2)), bias)
  with pytest.raises(ValueError, match="expected x"):
    conv.conv2d(x[0], kernel, bias)
  with pytest.raises(ValueError, match="precision"):
    conv.conv2d(x, kernel, bias, precision="float16")
  with pytest.raises(ValueError, match="impl"):
    conv.conv2d(x, kernel, bias, impl="cudnn")


@ONEDNN
def test_onednn_reports_its_instruction_set():
  assert conv_onednn.cpu_isa() in conv_onednn._ISA_MASKS
  assert conv_onednn.onednn_version().startswith("3.")
  # bfloat16 is the default exactly where it is measured faster, which needs it in hardware.
  assert (conv.default_precision("cpu") == "bfloat16") == conv_onednn.bfloat16_faster()
  assert conv_onednn.bfloat16_native() or not conv_onednn.bfloat16_faster()
  assert "oneDNN" in conv.describe("onednn", "bfloat16")


def test_compiler_options_turn_ynnpack_off_only_for_float32_on_xla_with_avx512(monkeypatch):
  monkeypatch.setattr(conv, "cpu_has_avx512", lambda: True)
  assert conv.xla_compiler_options("xla", "float32", "cpu") == {
      "xla_cpu_experimental_ynn_fusion_type": ""}
  assert conv.xla_compiler_options("xla", "bfloat16", "cpu") == {}
  assert conv.xla_compiler_options("onednn", "float32", "cpu") == {}
  assert conv.xla_compiler_options("xla", "float32", "gpu") == {}
  monkeypatch.setattr(conv, "cpu_has_avx512", lambda: False)  # AVX2: YNNPACK is the faster
  assert conv.xla_compiler_options("xla", "float32", "cpu") == {}


def test_avx512_detection_reads_this_cpu():
  flags = pathlib.Path("/proc/cpuinfo")
  if flags.is_file():
    assert conv.cpu_has_avx512() == (" avx512f" in flags.read_text())
  else:
    assert conv.cpu_has_avx512() is False


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  full_env = {**os.environ, **(env or {})}
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, cwd=REPO_ROOT, env=full_env, timeout=600)


@ONEDNN
def test_data_parallel_shard_map_matches_one_device():
  result = _run("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import PartitionSpec as P
      from pallas_kernels import conv
      assert jax.device_count() == 2
      keys = jax.random.split(jax.random.key(0), 3)
      x = jax.random.normal(keys[0], (4, 6, 5, 3))
      kernel = jax.random.normal(keys[1], (3, 3, 3, 8))
      bias = jax.random.normal(keys[2], (8,))
      def loss(kernel, bias, x):
        return jnp.mean(conv.conv2d(x, kernel, bias, precision="bfloat16", impl="onednn") ** 2)
      def step(kernel, bias, x):
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(kernel, bias, x)
        return jax.lax.pmean((value, grads), "data")
      mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
      sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data")),
                                      out_specs=P(), check_vma=False))
      value, grads = sharded(kernel, bias, x)
      value1, grads1 = jax.value_and_grad(loss, argnums=(0, 1))(kernel, bias, x)
      np.testing.assert_allclose(value, value1, rtol=1e-5)
      for a, b in zip(grads, grads1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
      print("ok")
  """, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")


_FALLBACK_CHECK = """
    import warnings
    import jax.numpy as jnp
    warnings.simplefilter("always")
    from pallas_kernels import conv, conv_onednn
    with warnings.catch_warnings(record=True) as caught:
      impls = [conv.default_conv_impl("cpu") for _ in range(3)]
    assert impls == ["xla"] * 3, impls
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "oneDNN convolution is unavailable" in messages[0], messages
    assert conv.default_precision("cpu") == "float32"
    assert "oneDNN unavailable" in conv.describe()
    out = conv.conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 2)), jnp.zeros(2))
    assert out.shape == (1, 4, 4, 2)
    print(conv_onednn.onednn_unavailable_reason())
"""


def test_falls_back_to_xla_with_one_warning_without_onednn(tmp_path):
  result = _run(_FALLBACK_CHECK, {"ONEDNN_ROOT": str(tmp_path / "nowhere"),
                                  "SEPCONV_JAX_CACHE": str(tmp_path / "cache")})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "oneDNN headers and library not found" in result.stdout


def test_without_a_compiler_both_kernels_fall_back(tmp_path):
  # An empty cache and no compiler on PATH: neither library can be built.
  code = _FALLBACK_CHECK + """
    import warnings
    from pallas_kernels import api
    with warnings.catch_warnings(record=True) as caught:
      assert api.default_impl("cpu") == "xla"
    assert "separable-convolution kernel is unavailable" in str(caught[0].message)
"""
  env = {"PATH": str(tmp_path), "SEPCONV_JAX_CACHE": str(tmp_path / "cache"), "CXX": ""}
  result = _run(code, env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no C++ compiler found" in result.stdout


@ONEDNN
def test_an_unwritable_cache_builds_in_a_temporary_directory(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  result = _run("""
      from pallas_kernels import conv_onednn, _native
      assert conv_onednn.onednn_available(), conv_onednn.onednn_unavailable_reason()
      print(_native._fallback_cache_dir())
  """, {"SEPCONV_JAX_CACHE": str(blocker / "cache")})
  assert result.returncode == 0, result.stderr[-3000:]
  fallback = pathlib.Path(result.stdout.strip().splitlines()[-1])
  assert list(fallback.glob("conv_onednn_*.so"))


def test_bfloat16_xla_path_lowers_for_cuda():
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((2, 16, 16, 8), (3, 3, 8, 4), (4,))]

  def loss(x, kernel, bias):
    return jnp.sum(conv.conv2d(x, kernel, bias, precision="bfloat16", impl="xla") ** 2)

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*shapes).lower(
      lowering_platforms=("cuda",)).as_text()
  # Three convolutions (forward, d x, d kernel), each on bfloat16 operands with a float32 result.
  convolutions = [line for line in text.splitlines() if "stablehlo.convolution" in line]
  assert len(convolutions) == 3
  assert all("bf16>, tensor<" in line and "xf32>" in line.split("->")[-1]
             for line in convolutions), convolutions


@ONEDNN
def test_bfloat16_without_hardware_support_warns_and_rounds(monkeypatch):
  # Where the CPU has no bfloat16 hardware (plain AVX2 has no oneDNN bfloat16 convolution at all),
  # bfloat16 is float32 convolutions of rounded operands: the same values as the real thing.
  from pallas_kernels import _native  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(conv_onednn, "bfloat16_native", lambda: False)
  monkeypatch.setattr(_native, "_warned", set())
  x, kernel, bias, g = _operands((2, 7, 9, 6, 32, 3, 3))
  fn = functools.partial(conv.conv2d, precision="bfloat16", impl="onednn")
  with pytest.warns(RuntimeWarning, match="emulated, no faster"):
    results = _value_and_grads(fn, x, kernel, bias, g)
  r = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
  out, d_x, d_kernel, _ = _value_and_grads(_reference, r(x), r(kernel), bias, r(g))
  for name, actual, wanted in zip(("out", "d x", "d kernel", "d bias"), results,
                                  (out, d_x, d_kernel, jnp.sum(g, (0, 1, 2)))):
    assert actual.dtype == jnp.float32, name
    _assert_close(actual, wanted, TOLERANCE["bfloat16 vs rounded"], f"rounded {name}")
  # A bfloat16 result after the fused ReLU: the float32 convolution's, cast (oneDNN's float32
  # convolution writes float32 only).
  narrow = conv.conv2d(x, kernel, bias, precision="bfloat16", impl="onednn", relu=True,
                       result_dtype=jnp.bfloat16)
  assert narrow.dtype == jnp.bfloat16
  _assert_close(narrow, jax.nn.relu(out), 2 ** -8, "rounded, ReLU, bfloat16 result")


@ONEDNN
@pytest.mark.parametrize("isa, expected", [
    ("avx512_core_amx", "bfloat16"), ("avx512_core_bf16", "bfloat16"),
    ("avx512_core_fp16", "float32"), ("avx2", "float32")])
def test_bfloat16_is_the_default_only_where_measured_faster(monkeypatch, isa, expected):
  from pallas_kernels import _native  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(conv_onednn, "cpu_isa", lambda: isa)
  monkeypatch.setattr(_native, "_warned", set())
  assert conv.default_precision("cpu") == expected
  # Asked for anyway, bfloat16 says once why it will not pay (traced only: nothing runs here).
  x, kernel, bias, _ = _operands((1, 4, 4, 3, 2, 3, 3))
  trace = lambda: jax.eval_shape(functools.partial(conv.conv2d, precision="bfloat16",
                                                   impl="onednn"), x, kernel, bias)
  if expected == "bfloat16":
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      trace()
  else:
    with pytest.warns(RuntimeWarning, match="emulated" if isa == "avx2" else "slower than float32"):
      trace()
