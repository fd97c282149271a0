"""The TFDS cache and the `sepconv prepare` command, on tiny folders made here."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sepconv_data import builder, extract, pipeline, prepare, sources
from tests import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PATCH = 48
SEQUENCES = ("seq_a", "seq_b", "seq_c", "seq_d")
CONFIG = builder.make_config(
    extract.ExtractConfig(patch_size=PATCH, patches_tried=10, max_patches=4, flow_scale=10.0,
                          max_height=None, seed=3),
    validation_fraction=0.5)


def _write_source(root: pathlib.Path, frames: int = 5) -> pathlib.Path:
  """Frame folders of a blurred random texture panning 3 px per frame, 96 x 112."""
  return synthetic.write_panning_sequences(root, SEQUENCES, frames=frames, shift=3, height=96,
                                           width=112)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """(source folder, data_dir) of a cache prepared once for this module."""
  base = tmp_path_factory.mktemp("cache")
  source = _write_source(base / "sources" / "tiny")
  data_dir = base / "out"
  folder, reused = builder.prepare([source], data_dir, CONFIG, workers=1, progress=False)
  assert not reused and folder.is_dir()
  return source, data_dir


def _examples(data_dir, split, **kwargs):
  dataset = builder.load_builder(data_dir).as_dataset(split=split, **kwargs)
  return [tf.nest.map_structure(lambda t: t.numpy(), e) for e in dataset]


def test_round_trip_matches_direct_extraction(cache):
  source, data_dir = cache
  # Same sequence names as in the cache ("tiny/seq_a", ...), hence the same random draws.
  direct = {p.key: p for r in extract.extract_sequences(
      sources.discover_sequences(source.parent), CONFIG.extract, workers=1, progress=False)
      for p in r.patches}
  loaded = _examples(data_dir, "train") + _examples(data_dir, "validation")
  assert len(loaded) == len(direct) > 0
  for example in loaded:
    sequence = example["sequence"].decode()
    candidates = [p for p in direct.values() if (p.sequence, p.frame, p.top, p.left) == (
        sequence, example["frame"], example["top"], example["left"])]
    assert candidates, (sequence, example["frame"])
    patch = candidates[0]
    for key in ("x0", "y", "x1"):
      assert example[key].shape == (PATCH, PATCH, 3) and example[key].dtype == np.uint8
      np.testing.assert_array_equal(example[key], getattr(patch, key))
    assert example["flow"] == pytest.approx(patch.flow, rel=1e-6)


def test_split_is_by_sequence(cache):
  _, data_dir = cache
  names = {split: {e["sequence"].decode() for e in _examples(data_dir, split)}
           for split in ("train", "validation")}
  assert names["train"] and names["validation"]
  assert not names["train"] & names["validation"]
  metadata = builder.load_metadata(data_dir)
  assert set(metadata["sequences"]["train"]) >= names["train"]
  assert set(metadata["sequences"]["validation"]) >= names["validation"]
  assert sorted(metadata["sequences"]["train"] + metadata["sequences"]["validation"]) == [
      f"tiny/{n}" for n in SEQUENCES]
  info = builder.load_builder(data_dir).info
  for split in ("train", "validation"):
    counts = metadata["counts"][split]["total"]
    assert counts["patches"] == info.splits[split].num_examples
    assert counts["triplets"] == 3 * len(metadata["sequences"][split])
    assert counts["triplets"] == (counts["cuts"] + counts["too_small"] + counts["low_motion"]
                                  + counts["kept"])


def test_split_sequences_rules():
  names = [f"s{i}" for i in range(20)]
  train, validation = builder.split_sequences(names, validation_fraction=0.15, seed=0)
  assert len(validation) == 3 and sorted(train + validation) == sorted(names)
  assert builder.split_sequences(names, validation_fraction=0.15, seed=0) == (train, validation)
  assert builder.split_sequences(names[:2], validation_fraction=0.01, seed=0)[1] != []
  assert builder.split_sequences(names, validation_fraction=0.0, seed=0)[1] == []
  assert builder.split_sequences(names, validation_fraction=0.5, seed=0,
                                 validation_sequences=("s4",))[1] == ["s4"]
  with pytest.raises(builder.CacheError, match="not found"):
    builder.split_sequences(names, validation_fraction=0.1, seed=0, validation_sequences=("x",))


def test_a_lone_sequence_is_split_in_time(tmp_path):
  """One clip (the shipped samples/) still gets a validation split: its last frames, disjoint
  from the training frames, and findable by name for the full-frame validation."""
  clip = sources.Sequence("clip", "/x/clip.mp4", "video", 81)
  train, validation = builder.split_lone_sequence(clip, 0.15)
  assert (train.name, train.start, train.stop, train.num_frames) == ("clip[0:69]", 0, 69, 69)
  assert (validation.name, validation.start, validation.stop) == ("clip[69:]", 69, None)
  assert sources.find_sequence({"clip": clip}, "clip[69:]") == validation
  assert sources.find_sequence({"clip": clip}, "other[69:]") is None
  assert builder.split_lone_sequence(sources.Sequence("c", "c.mp4", "video", 5), 0.15) is None
  assert builder.split_lone_sequence(clip, 0.0) is None
  # The frame range is what iter_frames reads, and extraction numbers frames in the whole source.
  source = synthetic.write_panning_sequences(tmp_path, ("seq",), frames=8, shift=3, height=96,
                                             width=112)
  whole = sources.discover_sequences(source)[0]
  frames = list(sources.iter_frames(whole))
  part = list(sources.iter_frames(whole.part(2, 6)))
  assert len(part) == 4 and all(np.array_equal(a, b) for a, b in zip(part, frames[2:6]))
  result = extract.extract_sequence(whole.part(2, 6), CONFIG.extract)
  assert {p.frame for p in result.patches} <= {3, 4}


def test_prepared_cache_is_reused_without_recomputation(cache, monkeypatch):
  source, data_dir = cache

  def fail(*args, **kwargs):
    raise AssertionError("recomputed")

  monkeypatch.setattr(extract, "extract_sequences", fail)
  folder, reused = builder.prepare([source], data_dir, CONFIG, workers=1, progress=False)
  assert reused and folder == builder.find_dataset(data_dir)
  with pytest.raises(builder.CacheError, match="other sources"):
    other = _write_source(source.parent.parent / "other" / "tiny")
    builder.prepare([other], data_dir, CONFIG, workers=1, progress=False)


def test_interrupted_run_leaves_nothing_loadable(tmp_path, monkeypatch):
  source = _write_source(tmp_path / "src", frames=3)
  real = extract.extract_sequences

  def interrupted(*args, **kwargs):
    for i, result in enumerate(real(*args, **kwargs)):
      if i == 1:
        raise KeyboardInterrupt
      yield result

  monkeypatch.setattr(extract, "extract_sequences", interrupted)
  with pytest.raises(KeyboardInterrupt):
    builder.prepare([source], tmp_path / "out", CONFIG, workers=1, progress=False)
  assert builder.dataset_folders(tmp_path / "out") == []
  assert not list((tmp_path / "out").rglob("*incomplete*"))
  with pytest.raises(builder.CacheError, match="no prepared"):
    builder.load_builder(tmp_path / "out")


def _digest(batch):
  return hashlib.sha1(b"".join(np.asarray(batch[k]).tobytes() for k in ("x0", "y", "x1"))
                      ).hexdigest()


def test_train_pipeline_batches_are_deterministic_and_host_sharded(cache):
  _, data_dir = cache
  kwargs = dict(batch_size=4, crop_size=32, shuffle_buffer=16)
  first = [_digest(b) for b in pipeline.train_dataset(data_dir, seed=1, **kwargs).take(6)]
  again = [_digest(b) for b in pipeline.train_dataset(data_dir, seed=1, **kwargs).take(6)]
  other = [_digest(b) for b in pipeline.train_dataset(data_dir, seed=2, **kwargs).take(6)]
  assert first == again and first != other
  batch = next(iter(pipeline.train_dataset(data_dir, **kwargs)))
  for key in ("x0", "x1", "y"):
    assert batch[key].shape == (4, 32, 32, 3) and batch[key].dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(batch[key])) <= float(tf.reduce_max(batch[key])) <= 1.0

  def keys(index, count):
    return [(e["x0"].numpy().tobytes()) for e in pipeline.read_split(
        data_dir, "train", process_index=index, process_count=count)]

  everything, host0, host1 = keys(0, 1), keys(0, 2), keys(1, 2)
  assert len(host0) == len(host1) == len(everything) // 2
  assert not set(host0) & set(host1) and set(host0) | set(host1) <= set(everything)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.read_split(data_dir, "train", process_index=2, process_count=2)


def test_max_and_min_flow_keep_exactly_the_patches_that_move_that_much(cache):
  _, data_dir = cache
  examples = _examples(data_dir, "train")
  flows = np.array([e["flow"] for e in examples])
  threshold = float(np.median(flows))
  for bound, keeps in (("max_flow", lambda flow: flow <= threshold),
                       ("min_flow", lambda flow: flow >= threshold)):
    expected = {e["x0"].tobytes() for e in examples if keeps(e["flow"])}
    assert 0 < len(expected) < len(examples)
    kept = {e["x0"].numpy().tobytes()
            for e in pipeline.read_split(data_dir, "train", **{bound: threshold})}
    assert kept == expected, bound
  batch = next(iter(pipeline.train_dataset(data_dir, batch_size=2, crop_size=32,
                                            max_flow=threshold)))
  assert batch["y"].shape == (2, 32, 32, 3)
  # Nothing left: an error, not an endless search for a first batch.
  with pytest.raises(ValueError, match="no training patch"):
    pipeline.train_dataset(data_dir, crop_size=32, max_flow=float(flows.min()) / 2)
  with pytest.raises(ValueError, match="at least .* px and at most .* px"):
    pipeline.train_dataset(data_dir, crop_size=32, min_flow=threshold + 1e-3,
                           max_flow=threshold)
  with pytest.raises(ValueError, match="max_flow"):
    pipeline.read_split(data_dir, "train", max_flow=0.0)
  with pytest.raises(ValueError, match="min_flow"):
    pipeline.read_split(data_dir, "train", min_flow=-1.0)


def test_validation_pipeline_is_plain(cache):
  _, data_dir = cache
  full = list(pipeline.validation_dataset(data_dir, batch_size=64))
  centre = list(pipeline.validation_dataset(data_dir, batch_size=64, crop_size=32))
  examples = _examples(data_dir, "validation")
  assert full[0]["y"].shape == (len(examples), PATCH, PATCH, 3)
  np.testing.assert_array_equal(full[0]["y"].numpy(),
                                np.stack([e["y"] for e in examples]).astype(np.float32) / 255)
  np.testing.assert_array_equal(centre[0]["x0"].numpy(), full[0]["x0"].numpy()[:, 8:40, 8:40])


def test_pipeline_reports_a_missing_cache_and_a_too_large_crop(tmp_path, cache):
  with pytest.raises(builder.CacheError, match="sepconv prepare"):
    pipeline.train_dataset(tmp_path)
  with pytest.raises(ValueError, match="crop_size=64"):
    pipeline.train_dataset(cache[1], crop_size=64)


# --- the command ---------------------------------------------------------------------------------

def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "data.prepare", *map(str, args)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("make_args,message", [
    (lambda t: ["--source", t / "missing", "--out", t / "out"], "source folder not found"),
    (lambda t: ["--source", t, "--out", t / "out"], "no frame sequences"),
    (lambda t: ["--source", t, "--out", t / "out", "--patch-size", "0"], "positive"),
    (lambda t: ["--source", t, "--out", t / "out", "--max-patches", "40"], "max_patches=40"),
    (lambda t: ["--source", t, "--out", t / "out", "--colour"], "unrecognized arguments"),
    (lambda t: ["--out", t / "out"], "--source"),
    (lambda t: ["--source", t / "ucf101_interp", "--out", t / "out"], "evaluation set"),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, make_args, message):
  (tmp_path / "ucf101_interp").mkdir()
  result = _run_cli(*make_args(tmp_path))
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr
  assert not (tmp_path / "out").exists()


def test_cli_prints_counts_and_reuses_the_cache(tmp_path, capsys):
  source = _write_source(tmp_path / "clips", frames=4)
  args = ["--source", str(source), "--out", str(tmp_path / "out"), "--patch-size", "48",
          "--patches-tried", "10", "--max-patches", "4", "--workers", "1", "--no-progress",
          "--validation-fraction", "0.25", "--max-height", "0"]
  assert prepare.main(args) == 0
  out = capsys.readouterr().out
  assert "wrote " in out
  total = next(line for line in out.splitlines() if line.strip().startswith("total:"))
  for words in ("8 triplets seen", "rejected as cuts", "rejected for low motion", "kept"):
    assert words in total
  assert prepare.main(args) == 0
  assert "reused the cache" in capsys.readouterr().out
