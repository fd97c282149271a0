"""The weight converter against an independent PyTorch SepConv with the published key names.

The real `network-l1.pytorch` is not needed: a state dict with the same keys and shapes comes from
`benchmarks/torch_sepconv.py` (written from the published architecture, not from the Flax code), and
both networks must produce the same frames, full width and K = 51, through the padding policies.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

from sepconv_jax.commands import convert as convert_command  # noqa: E402
from sepconv_jax.network import checkpoint, convert, padding  # noqa: E402
from sepconv_jax.network.model import ConvOptions  # noqa: E402
from benchmarks.torch_sepconv import TorchSepConvNet, estimate  # noqa: E402

SUBNETS = ("moduleVertical1", "moduleVertical2", "moduleHorizontal1", "moduleHorizontal2")


@pytest.fixture(scope="module")
def torch_network():
  # Two busy cores: PyTorch's second thread only spins against JAX's (measured 0.1 s vs 1.2 s for
  # the op at 128x128).
  torch.set_num_threads(1)
  torch.manual_seed(0)
  network = TorchSepConvNet().eval()
  with torch.no_grad():
    # PyTorch's default initialisation leaves the kernels nearly constant and the output near 0;
    # give them a centre tap and per-pixel structure (output std about 0.6) so that a transposed
    # kernel or a swapped map would show.
    for name in SUBNETS:
      last = getattr(network, name)[7]
      last.weight.mul_(10.0)
      last.bias.normal_(0.0, 0.1)
      last.bias[network.kernel_size // 2] += math.sqrt(0.5)
  return network


@pytest.fixture(scope="module")
def weights_file(torch_network, tmp_path_factory):
  path = tmp_path_factory.mktemp("published") / "network-l1.pytorch"
  torch.save(torch_network.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def converted(weights_file, tmp_path_factory):
  out = tmp_path_factory.mktemp("converted") / "sepconv-l1"
  assert convert_command.main([str(weights_file), str(out)]) == 0
  return checkpoint.load_model(out)


def test_published_key_layout(torch_network):
  keys = set(torch_network.state_dict())
  assert len(keys) == 94 == 2 * len(convert.PUBLISHED_LAYOUT)
  assert keys == {f"module{name}.{kind}" for name in convert.PUBLISHED_LAYOUT
                  for kind in ("weight", "bias")}


def test_metadata_records_bgr(converted):
  model, metadata = converted
  assert metadata["channel_order"] == "BGR"
  assert metadata["info"]["source"] == "network-l1.pytorch"
  assert model.config == convert.SepConvConfig()


@pytest.fixture(scope="module")
def jax_forward(converted):
  model, _ = converted
  forward = nnx.jit(lambda m, a, b, conv: m(a, b, conv=conv), static_argnums=3)
  return lambda a, b, conv=ConvOptions("float32"): forward(model, a, b, conv)


# Both cases run the network at 128x128 (one compilation): 25 + 64 + 25 -> 128 for 'paper', and
# 64x96 -> 128x128 for 'improved'. float32 on the default convolution path (oneDNN on CPU) and
# on XLA must both match PyTorch's float32 network.
@pytest.mark.parametrize("height, width, policy, conv_impl", [
    (64, 64, "paper", None), (64, 96, "improved", None), (64, 64, "paper", "xla")])
def test_converted_weights_match_pytorch(torch_network, jax_forward, height, width, policy,
                                         conv_impl):
  rng = np.random.default_rng(height + width)
  frame0, frame1 = (rng.random((1, height, width, 3), np.float32) for _ in range(2))
  with torch.no_grad():
    expected = estimate(torch_network, *(torch.from_numpy(f).permute(0, 3, 1, 2)
                                         for f in (frame0, frame1)), padding=policy)
  expected = expected.permute(0, 2, 3, 1).numpy()
  forward = functools.partial(jax_forward, conv=ConvOptions("float32", conv_impl))
  actual = np.asarray(padding.run_padded(forward, frame0, frame1, policy=policy))
  assert actual.shape == expected.shape == (1, height, width, 3)
  assert expected.std() > 0.1  # the comparison is not between two near-zero frames
  np.testing.assert_array_less(np.abs(actual - expected).max(), 1e-4)


def test_newer_net_prefix_is_accepted(torch_network, converted):
  renamed = {"net" + key[len("module"):]: value.detach().numpy()
             for key, value in torch_network.state_dict().items()}
  model = convert.convert_state_dict(renamed)
  kernel = model.vertical_subnets[1].output_conv.kernel[...]
  np.testing.assert_array_equal(kernel, converted[0].vertical_subnets[1].output_conv.kernel[...])
  # Vertical2's OIHW weight lands transposed to HWIO.
  np.testing.assert_array_equal(
      kernel, torch_network.moduleVertical2[7].weight.detach().numpy().transpose(2, 3, 1, 0))


def _run_main(capsys, *args):
  code = convert_command.main([str(a) for a in args])
  captured = capsys.readouterr()
  return code, captured.err


def _assert_one_line_error(code, err, *fragments):
  assert code != 0
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  for fragment in fragments:
    assert fragment in err, err


def test_missing_input(tmp_path, capsys):
  code, err = _run_main(capsys, tmp_path / "nope.pytorch", tmp_path / "out")
  _assert_one_line_error(code, err, "not found")
  assert not (tmp_path / "out").exists()


def test_corrupt_input(tmp_path, capsys):
  bad = tmp_path / "network-l1.pytorch"
  bad.write_bytes(b"\x80\x02this is not a state dict" * 10)
  _assert_one_line_error(*_run_main(capsys, bad, tmp_path / "out"), "cannot read")


def test_wrong_keys(tmp_path, capsys):
  other = tmp_path / "other.pytorch"
  torch.save({"encoder.weight": torch.zeros(3)}, other)
  _assert_one_line_error(*_run_main(capsys, other, tmp_path / "out"), "missing keys")


def test_wrong_shape(torch_network):
  state = {key: value.detach().numpy() for key, value in torch_network.state_dict().items()}
  state["moduleConv3.2.weight"] = state["moduleConv3.2.weight"][:, :64]
  with pytest.raises(convert.ConversionError, match=r"Conv3\.2\.weight"):
    convert.convert_state_dict(state)


def test_existing_output(weights_file, tmp_path, capsys):
  (tmp_path / "out").mkdir()
  _assert_one_line_error(*_run_main(capsys, weights_file, tmp_path / "out"), "--overwrite")


def test_torch_missing(weights_file, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  _assert_one_line_error(*_run_main(capsys, weights_file, tmp_path / "out"),
                         "torch is not installed")


def test_command_line_error_has_no_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "sepconv_jax", "convert", str(tmp_path / "missing.pytorch"),
       str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  lines = [line for line in result.stderr.splitlines() if "sepconv convert" in line]
  assert lines and "not found" in lines[0] and "Traceback" not in result.stderr, result.stderr
