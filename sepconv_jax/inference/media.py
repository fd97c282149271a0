"""Reading and writing still frames (PNG, JPEG, ...) as RGB uint8 arrays, with OpenCV.

Conventions
  Arrays   (H, W, 3) uint8, RGB: what `sepconv_jax.Interpolator` takes and gives.
  Reading  Whatever the file holds is turned into that, or refused with a `MediaError` whose
           message names the file and says why:
             grey (1 channel)              -> RGB by copying the channel (lossless);
             grey + alpha, RGBA            -> the alpha channel is dropped when every pixel is
                                              fully opaque (lossless); an image with transparent
                                              pixels is refused (the output could not keep its
                                              transparency, and what lies under transparent pixels
                                              is arbitrary);
             16-bit samples                -> 8-bit by rounding (x / 257, the exact map of
                                              0..65535 onto 0..255), or kept as uint16 with
                                              `read_image(path, keep_16bit=True)` (frame
                                              sequences and PNG/TIFF pairs of 16-bit stay 16-bit);
             other sample types (float HDR, 32-bit integers) -> refused.
           EXIF orientation is not applied (both frames of a pair are read the same way, and the
           output keeps the stored pixel layout).
  Writing  The format follows the file extension (`.png`, `.jpg`/`.jpeg` at quality 95, ...).
           Files are written under a temporary name in the target directory and renamed into
           place (`os.replace`), so a crash or an error never leaves a half-written file under the
           final name.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator, Sequence

import cv2
import numpy as np

from sepconv_data.files import IMAGE_SUFFIXES, natural_key

# IMAGE_SUFFIXES (from sepconv_data.files): the extensions read as frames of a folder (what
# OpenCV's bundled codecs decode), and written.
JPEG_QUALITY = 95


def one_line(error: BaseException) -> str:
  """An error's message on one line, as every command prints it after `error: `."""
  return " ".join(str(error).split())


class MediaError(Exception):
  """A frame or video that cannot be read or written; the message is one line for the user."""


def _display(path: str | os.PathLike) -> str:
  return os.fspath(path)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: str | os.PathLike, *, keep_16bit: bool = False) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB, converting or refusing as the module says;
  with `keep_16bit`, a 16-bit file gives uint16 RGB instead (8-bit files still give uint8)."""
  path = pathlib.Path(path)
  try:
    # np.fromfile + imdecode: works for any path (cv2.imread fails silently on non-ASCII names).
    data = np.fromfile(path, dtype=np.uint8)
  except FileNotFoundError:
    raise MediaError(f"{_display(path)}: file not found") from None
  except IsADirectoryError:
    raise MediaError(f"{_display(path)}: is a directory, not an image") from None
  except OSError as error:
    raise MediaError(f"{_display(path)}: cannot read ({error.strerror or error})") from None
  if data.size == 0:
    raise MediaError(f"{_display(path)}: file is empty")
  if data[:8].tobytes() == _PNG_SIGNATURE and b"IEND" not in data[-64:].tobytes():
    # Caught here: libpng prints its own "libpng error" line on a PNG cut short.
    raise MediaError(f"{_display(path)}: truncated PNG (its end chunk is missing)")
  level = cv2.utils.logging.getLogLevel()
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our error says it
  try:
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  except cv2.error:  # some damaged files make a decoder raise instead of returning None
    image = None
  finally:
    cv2.utils.logging.setLogLevel(level)
  if image is None:
    raise MediaError(f"{_display(path)}: not a readable image (unknown format or damaged file)")
  if keep_16bit and image.dtype == np.uint16:
    return to_rgb8(image, name=_display(path), order="BGR", keep_16bit=True)
  return to_rgb8(image, name=_display(path), order="BGR")


def to_rgb8(image: np.ndarray, *, name: str = "image", order: str = "RGB",
            keep_16bit: bool = False) -> np.ndarray:
  """Any 2D/3D image array -> (H, W, 3) uint8 RGB, by the module's rules.

  Args:
    image: (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4); uint8 or uint16.
    name: How to call the image in error messages.
    order: Channel order of colour images: "BGR" (as OpenCV decodes) or "RGB".
    keep_16bit: Give uint16 images back as uint16 (full opacity is then alpha 65535).
  """
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
    raise MediaError(f"{name}: unsupported image shape {image.shape}")
  if image.dtype == np.uint16 and not keep_16bit:
    image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x / 257)
  elif image.dtype not in (np.uint8, np.uint16):
    raise MediaError(f"{name}: unsupported sample type {image.dtype} (8- or 16-bit images only)")
  channels = image.shape[2]
  if channels in (2, 4):
    alpha = image[:, :, -1]
    if alpha.min() < np.iinfo(image.dtype).max:
      raise MediaError(f"{name}: has transparent pixels (alpha channel); flatten it onto a "
                       "background first, the output has no transparency")
    image = image[:, :, :-1]
  if image.shape[2] == 1:
    return np.ascontiguousarray(np.repeat(image, 3, axis=2))
  if order == "BGR":
    image = image[:, :, ::-1]
  return np.ascontiguousarray(image)


def check_image_suffix(path: str | os.PathLike) -> None:
  """Raises MediaError unless `path` has an extension that `write_image` can write."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix not in IMAGE_SUFFIXES:
    raise MediaError(f"{_display(path)}: unsupported image extension {suffix or '(none)'!r} "
                     f"(use one of {', '.join(IMAGE_SUFFIXES)})")


def encode_image(image: np.ndarray, suffix: str) -> bytes:
  """(H, W, 3) uint8 (or, for PNG and TIFF, uint16) RGB -> the bytes of an image file of type
  `suffix` (e.g. ".png")."""
  params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix.lower() in (".jpg", ".jpeg") else []
  try:
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(image[:, :, ::-1]), params)
  except cv2.error:
    ok = False
  if not ok:
    raise MediaError(f"cannot encode an image as {suffix}")
  return encoded.tobytes()


def check_writable_dir(directory: str | os.PathLike, *, what: str) -> None:
  """Raises MediaError unless `directory` exists and we may create files in it."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise MediaError(f"cannot write {what}: directory {_display(directory)} does not exist")
  if not os.access(directory, os.W_OK | os.X_OK):
    raise MediaError(f"cannot write {what}: directory {_display(directory)} is not writable")


def check_output_file(path: str | os.PathLike, *, overwrite: bool,
                      inputs: Sequence[str | os.PathLike] = ()) -> pathlib.Path:
  """Checks that `path` can be created (or replaced with `overwrite`), and is none of `inputs`;
  returns it."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise MediaError(f"output {_display(path)} is a directory; give a file name")
  if path.exists() and not overwrite:
    raise MediaError(f"output {_display(path)} already exists (pass --overwrite to replace it)")
  if path.exists() and any(pathlib.Path(i).exists() and os.path.samefile(path, i) for i in inputs):
    raise MediaError(f"output {_display(path)} is an input; write the result somewhere else")
  check_writable_dir(path.parent, what=_display(path))
  return path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def default_permissions(path: str | os.PathLike, *, directory: bool = False) -> None:
  """Gives a file (or directory) made by `tempfile` (0600/0700) the usual permissions."""
  os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def _partial_affixes(path: pathlib.Path, directory: bool) -> tuple[str, str]:
  # Files keep their extension last (formats follow it); folders are `.<name>.<pid>.XXXX.partial`.
  if directory:
    return f".{path.name}.", ".partial"
  return f".{path.stem}.", f".partial{path.suffix}"


def partial_prefix(path: str | os.PathLike, *, directory: bool = False) -> str:
  """The hidden prefix of this process's temporary outputs for `path`: `.<name>.<pid>.`, so that a
  later run can tell a killed run's leftovers (`remove_stale_partials`) from a live run's."""
  return f"{_partial_affixes(pathlib.Path(path), directory)[0]}{os.getpid()}."


def remove_stale_partials(path: str | os.PathLike, *, directory: bool = False) -> None:
  """Removes the hidden temporary outputs for `path` left by runs that were killed (their process
  is gone); a live run's are kept."""
  path = pathlib.Path(path)
  prefix, suffix = _partial_affixes(path, directory)
  try:
    entries = list(path.absolute().parent.iterdir())
  except OSError:
    return
  for entry in entries:
    name = entry.name
    if not (name.startswith(prefix) and name.endswith(suffix)):
      continue
    pid = name[len(prefix):].split(".", 1)[0]
    if pid.isdigit() and not _pid_alive(int(pid)):
      with contextlib.suppress(OSError):
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def temporary_path(path: str | os.PathLike) -> pathlib.Path:
  """A fresh hidden name next to `path`, with the same extension (so formats still follow it);
  first removes what killed runs left for `path`."""
  path = pathlib.Path(path)
  remove_stale_partials(path)
  handle, name = tempfile.mkstemp(prefix=partial_prefix(path), suffix=f".partial{path.suffix}",
                                  dir=path.parent)
  os.close(handle)
  return pathlib.Path(name)


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[list[pathlib.Path]]:
  """Yields temporary paths to fill; renames them onto `paths` only if the block succeeds.

  On any error (or interrupt) every temporary file is removed and no final path is touched.
  """
  temps: list[pathlib.Path] = []
  try:
    for path in paths:
      temps.append(temporary_path(path))
    yield temps
    for temp, path in zip(temps, paths):
      default_permissions(temp)
      os.replace(temp, path)
  except OSError as error:
    # Name the final path, not the temporary one the user never asked for.
    by_temp = {os.fspath(temp): path for temp, path in zip(temps, paths)}
    target = by_temp.get(os.fspath(error.filename or ""), paths[min(len(temps), len(paths) - 1)])
    raise MediaError(f"cannot write {_display(target)}: {error.strerror or error}") from None
  finally:
    for temp in temps:
      with contextlib.suppress(FileNotFoundError):
        temp.unlink()


def write_images(images: Sequence[np.ndarray], paths: Sequence[str | os.PathLike]) -> None:
  """Writes RGB uint8 frames to `paths` (format by extension), all of them or none."""
  encoded = [encode_image(image, pathlib.Path(path).suffix) for image, path in zip(images, paths)]
  with atomic_outputs(paths) as temps:
    for data, temp in zip(encoded, temps):
      temp.write_bytes(data)


def write_image(image: np.ndarray, path: str | os.PathLike) -> None:
  write_images([image], [path])


def list_images(directory: str | os.PathLike) -> list[pathlib.Path]:
  """The image files of `directory` (by extension, hidden files skipped), in natural order."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise MediaError(f"{_display(directory)}: not a directory")
  try:
    entries = list(directory.iterdir())
  except OSError as error:
    raise MediaError(f"{_display(directory)}: cannot list ({error.strerror or error})") from None
  files = [entry for entry in entries
           if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".")
           and entry.is_file()]
  return sorted(files, key=lambda entry: natural_key(entry.name))
