"""`sepconv_triplets`: a TFDS builder that caches motion-weighted triplet patches from local video.

The builder reads the folder given as its manual directory (`DownloadConfig(manual_dir=...)`:
DAVIS layout, frame folders, videos, see `sources`), runs `extract` over every
sequence, and writes two splits, `train` and `validation`, assigned **by sequence**: every patch of
a sequence lands in the same split, so no scene is seen in both. A source of a single sequence
is split in time instead: its last frames (the validation fraction of them) are the validation
split, named `<name>[cut:]`, and the frames before them the training split, `<name>[0:cut]`.

Storage: each example holds `x0`, `y`, `x1` as raw uint8 tensors (P, P, 3), RGB, with no image
codec: decoding is a `tf.io.decode_raw`, far cheaper than PNG, and lossless (JPEG would put its
artefacts into the targets). That costs P*P*9 bytes per example (202.5 kB at P = 150). Alongside:
`flow` (the patch's mean optical-flow magnitude x0 -> x1, in pixels), `sequence`, `frame` (index
of y), `top`, `left`, `gap` (x0 and x1 are frames `frame - gap` and `frame + gap`).

Caching: `download_and_prepare` writes into a temporary folder that TFDS renames only when every
split is complete, so an interrupted run leaves nothing that would be loaded; a prepared folder is
reused without recomputation, and `load_builder(data_dir)` opens it from its files alone
(`tfds.builder_from_directory`), without this module's code or any network access. The counts of
the run (triplets seen, rejected as cuts, rejected for low motion, kept, per split and per
sequence) and the extraction parameters are stored in the version folder's `metadata.json`.

Config names: `default` for the default parameters; any other parameters get
`custom_<hash of the parameters>`, so two parameter sets never share (or silently reuse) a folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import tempfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from . import extract, sources

# tensorflow-datasets 4.9 warns that `FeatureConnector.dtype` is deprecated each time it reads its
# own feature specs (three times per training run), and that a non-default extraction is a
# "custom data configuration" (which `sepconv prepare` chose on purpose): nothing to act on.
_TFDS_NOISE = ("FeatureConnector.dtype` is deprecated", "Using custom data configuration")
logging.getLogger("absl").addFilter(
    lambda record: not any(text in record.getMessage() for text in _TFDS_NOISE))

NAME = "sepconv_triplets"
DATASET_VERSION = "1.0.0"
TRAIN, VALIDATION = "train", "validation"


class CacheError(ValueError):
  """A data folder without a (single) prepared dataset, or a bad source."""


@dataclasses.dataclass(eq=False)
class TripletConfig(tfds.core.BuilderConfig):
  """Everything that defines the dataset's contents (not how fast it is made)."""
  extract: extract.ExtractConfig = dataclasses.field(default_factory=extract.ExtractConfig)
  validation_fraction: float = 0.15
  validation_sequences: tuple[str, ...] = ()

  def parameters(self) -> dict:
    return {"extract": dataclasses.asdict(self.extract),
            "validation_fraction": self.validation_fraction,
            "validation_sequences": sorted(self.validation_sequences)}


def make_config(extract_config: extract.ExtractConfig | None = None, *,
                validation_fraction: float = 0.15,
                validation_sequences: tuple[str, ...] = ()) -> TripletConfig:
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"{validation_fraction=} must be in [0, 1)")
  config = TripletConfig(name="tmp", extract=extract_config or extract.ExtractConfig(),
                         validation_fraction=validation_fraction,
                         validation_sequences=tuple(validation_sequences))
  defaults = TripletConfig(name="tmp")
  if config.parameters() == defaults.parameters():
    config.name = "default"
  else:
    digest = hashlib.sha1(json.dumps(config.parameters(), sort_keys=True).encode()).hexdigest()
    config.name = f"custom_{digest[:10]}"
  config.description = json.dumps(config.parameters(), sort_keys=True)
  return config


def split_sequences(names: list[str], *, validation_fraction: float, seed: int,
                    validation_sequences: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
  """(train, validation) names. Explicit `validation_sequences` win; otherwise a seeded choice.

  With a fraction > 0 and at least two sequences, validation gets at least one sequence and
  train keeps at least one. The choice ranks sequences by a hash of (seed, name), so it does not
  depend on the order or the presence of other sequences beyond the count.
  """
  names = sorted(set(names))
  if validation_sequences:
    missing = sorted(set(validation_sequences) - set(names))
    if missing:
      raise CacheError(f"validation sequences not found in the source: {', '.join(missing)}")
    validation = sorted(set(validation_sequences))
  else:
    count = round(validation_fraction * len(names))
    if validation_fraction > 0 and len(names) >= 2:
      count = min(max(count, 1), len(names) - 1)
    ranked = sorted(names, key=lambda n: (zlib.crc32(f"{seed}:{n}".encode()), n))
    validation = sorted(ranked[:count])
  train = [n for n in names if n not in set(validation)]
  return train, validation


def split_lone_sequence(sequence: sources.Sequence, validation_fraction: float
                        ) -> tuple[sources.Sequence, sources.Sequence] | None:
  """A source of one sequence still gets a validation split: its last `validation_fraction` of
  frames (at least 3), disjoint from the training frames before them. None if too short."""
  count = max(3, round(validation_fraction * sequence.num_frames))
  cut = sequence.num_frames - count
  if validation_fraction <= 0 or cut < 3:
    return None
  return sequence.part(0, cut), sequence.part(cut, None)


class SepconvTriplets(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Triplet patches (x0, y, x1) from local video for frame-interpolation training."""

  name = NAME
  # TFDS 4.9.10 looks up `code_path` through `importlib_resources`, a backport it installs only
  # on Python < 3.9, and fails with ModuleNotFoundError; this file is the code path anyway.
  code_path = pathlib.Path(__file__)
  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "DAVIS triplets, DIS-flow-weighted patches, split by sequence."}
  BUILDER_CONFIGS = [make_config()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Give a local folder as the manual directory (`sepconv prepare --source DIR`): a DAVIS
  layout (JPEGImages/480p/<sequence>/NNNNN.jpg), folders of consecutive frames, or video files.
  """

  def __init__(self, *args, workers: int = 2, progress: bool = True,
               source_dirs: list[str] | None = None, **kwargs):
    self._workers = workers
    self._source_dirs = source_dirs
    self._progress = progress
    self._counts: dict[str, dict] = {}
    super().__init__(*args, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.extract.patch_size
    # BYTES: one raw byte string per frame (without it TFDS writes uint8 as an int64 list,
    # 1.5x larger on disk and slower to parse).
    frame = tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                 encoding=tfds.features.Encoding.BYTES)
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "x0": frame, "y": frame, "x1": frame,
            "flow": tfds.features.Scalar(np.float32, doc="mean |flow| x0 -> x1, pixels"),
            "sequence": tfds.features.Text(),
            "frame": tfds.features.Scalar(np.int32, doc="index of y in its sequence"),
            "top": tfds.features.Scalar(np.int32),
            "left": tfds.features.Scalar(np.int32),
            "gap": tfds.features.Scalar(np.int32, doc="x0, x1 are frames frame -/+ gap"),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    sequences = sources.discover_sequences(dl_manager.manual_dir)
    parts = (split_lone_sequence(sequences[0], config.validation_fraction)
             if len(sequences) == 1 and not config.validation_sequences else None)
    if parts is not None:  # the training part first, the validation part after it
      sequences = list(parts)
      train, validation = [parts[0].name], [parts[1].name]
    else:
      train, validation = split_sequences(
          [s.name for s in sequences], validation_fraction=config.validation_fraction,
          seed=config.extract.seed, validation_sequences=config.validation_sequences)
    by_split = {TRAIN: [s for s in sequences if s.name in set(train)],
                VALIDATION: [s for s in sequences if s.name in set(validation)]}
    source_dirs = self._source_dirs or [os.fspath(dl_manager.manual_dir)]
    self.info.metadata.update({"parameters": config.parameters(),
                               "source_dirs": source_dirs,
                               "sequences": {TRAIN: train, VALIDATION: validation},
                               "counts": self._counts})
    return {split: self._generate_examples(split, seqs)
            for split, seqs in by_split.items() if seqs}

  def _generate_examples(self, split: str, sequences: list[sources.Sequence]):
    totals = extract.Counts()
    per_sequence, errors = {}, {}
    self._counts[split] = {"total": totals.as_dict(), "per_sequence": per_sequence,
                           "errors": errors}
    for result in extract.extract_sequences(sequences, self.builder_config.extract,
                                            workers=self._workers, progress=self._progress,
                                            description=split):
      totals += result.counts
      per_sequence[result.name] = result.counts.as_dict()
      if result.error:
        errors[result.name] = result.error
      self._counts[split]["total"] = totals.as_dict()
      for patch in result.patches:
        yield patch.key, {"x0": patch.x0, "y": patch.y, "x1": patch.x1,
                          "flow": np.float32(patch.flow), "sequence": patch.sequence,
                          "frame": patch.frame, "top": patch.top, "left": patch.left,
                          "gap": patch.gap}
    if totals.patches == 0:
      raise CacheError(f"no patch kept in the {split} split ({totals.triplets} triplets seen, "
                       f"{totals.cuts} cuts, {totals.too_small} too small, "
                       f"{totals.low_motion} low motion): nothing to write")


def prepare(source_dirs: list[str | os.PathLike], data_dir: str | os.PathLike,
            config: TripletConfig | None = None, *, workers: int = 2, progress: bool = True,
            overwrite: bool = False) -> tuple[pathlib.Path, bool]:
  """Builds the dataset from the source folders into `data_dir`, or reuses a prepared one.

  The sources are presented to TFDS as one manual directory of symbolic links named after each
  source's folder name, so sequence names read `<source folder>/<path inside it>` (for example
  `davis_480p/JPEGImages/480p/blackswan`). Returns (dataset folder, whether it was reused).
  Raises SourceError / CacheError with a one-line message on a bad source or on a prepared
  dataset that was made from other sources (pass overwrite=True to rebuild it).
  """
  config = config or make_config()
  source_dirs = [pathlib.Path(s).resolve() for s in source_dirs]
  if not source_dirs:
    raise sources.SourceError("no source folder given")
  names = [s.name for s in source_dirs]
  if len(set(names)) != len(names):
    raise sources.SourceError(f"source folders must have distinct names, got {names}")
  for source in source_dirs:
    sources.discover_sequences(source)  # fail early and clearly on a bad source
  recorded = [str(s) for s in source_dirs]
  # A config equal to a predefined one must be passed by name (TFDS refuses a duplicate).
  predefined = {c.name for c in SepconvTriplets.BUILDER_CONFIGS}
  builder = SepconvTriplets(data_dir=os.fspath(data_dir),
                            config=config.name if config.name in predefined else config,
                            workers=workers, progress=progress, source_dirs=recorded)
  folder = pathlib.Path(builder.data_dir)
  if (folder / "dataset_info.json").exists() and not overwrite:
    stored = load_metadata_from(folder).get("source_dirs")
    if stored is not None and sorted(stored) != sorted(recorded):
      raise CacheError(f"{folder} was prepared from other sources ({', '.join(stored)}); "
                       "pass --overwrite or choose another --out")
    return folder, True
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  with tempfile.TemporaryDirectory(prefix="sepconv_sources_") as manual_dir:
    for source in source_dirs:
      (pathlib.Path(manual_dir) / source.name).symlink_to(source, target_is_directory=True)
    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
    # prepared" on stdout; `sepconv prepare` reports the outcome itself.
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          download_dir=manual_dir,  # TFDS would otherwise leave an empty downloads/ in data_dir
          download_config=tfds.download.DownloadConfig(
              manual_dir=manual_dir, download_mode=mode, try_download_gcs=False,
              compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return folder, False


def dataset_folders(data_dir: str | os.PathLike) -> list[pathlib.Path]:
  """Prepared `<data_dir>/sepconv_triplets/<config>/<version>` folders (complete ones only)."""
  root = pathlib.Path(data_dir) / NAME
  if not root.is_dir():
    return []
  return sorted(p.parent for p in root.glob("*/*/dataset_info.json")
                if "incomplete" not in p.parent.name)


def find_dataset(data_dir: str | os.PathLike, config: str | None = None) -> pathlib.Path:
  """The one prepared dataset folder under `data_dir` (or the one of config `config`)."""
  folders = dataset_folders(data_dir)
  if config is not None:
    folders = [f for f in folders if f.parent.name == config]
  if len(folders) == 1:
    return folders[0]
  if not folders:
    raise CacheError(f"no prepared {NAME} dataset in {data_dir}"
                     + (f" for config {config!r}" if config else "")
                     + " (run sepconv prepare --source DIR --out DIR)")
  names = ", ".join(f"{f.parent.name}/{f.name}" for f in folders)
  raise CacheError(f"several prepared datasets in {data_dir} ({names}): pass config=")


def load_builder(data_dir: str | os.PathLike, config: str | None = None):
  """A read-only TFDS builder over the prepared files: no recomputation, no network."""
  return tfds.builder_from_directory(os.fspath(find_dataset(data_dir, config)))


def load_metadata(data_dir: str | os.PathLike, config: str | None = None) -> dict:
  """The parameters, the split's sequences and the counts stored with the dataset."""
  return load_metadata_from(find_dataset(data_dir, config))


def load_metadata_from(folder: str | os.PathLike) -> dict:
  path = pathlib.Path(folder) / "metadata.json"
  return json.loads(path.read_text()) if path.exists() else {}
