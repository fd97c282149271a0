"""The package layout holds: the repository's `data/` is the installed `sepconv_data`, nothing
imports a top-level `data`, and imports flow one way (`pallas_kernels` needs only jax,
`sepconv_data` never imports jax)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules_after_import(statement: str) -> set[str]:
  code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO_ROOT, check=True, timeout=300)
  return set(result.stdout.split())


def test_the_data_folder_is_the_installed_sepconv_data_package():
  import sepconv_data  # pylint: disable=import-outside-toplevel
  assert pathlib.Path(sepconv_data.__file__).resolve().parent == REPO_ROOT / "data"


def test_nothing_imports_a_top_level_data_module():
  """`data` would be whatever the user's working directory holds (tests/test_install.py)."""
  for folder in ("pallas_kernels", "sepconv_jax", "data", "tests", "benchmarks", "."):
    for module, names in _imported_top_level_names(folder, recursive=folder != ".").items():
      assert "data" not in names, module


def test_importing_sepconv_jax_is_light():
  """The public names load on first use: `import sepconv_jax` and `sepconv --help` need no jax."""
  modules = _modules_after_import("import sepconv_jax, sepconv_jax.commands")
  assert not {"jax", "flax", "tensorflow", "cv2"} & modules


def test_pallas_kernels_imports_only_jax():
  modules = _modules_after_import("import pallas_kernels")
  assert not {"flax", "tensorflow", "sepconv_jax", "sepconv_data", "cv2", "torch"} & modules


def _imported_top_level_names(package: str, recursive: bool = True) -> dict[str, set[str]]:
  """{module file: top-level names it imports}, read from the source (TensorFlow itself imports
  jax when it is installed, so only the project's own import statements can be checked)."""
  imported = {}
  folder = REPO_ROOT / package
  for path in sorted(folder.rglob("*.py") if recursive else folder.glob("*.py")):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split(".")[0])
    imported[path.relative_to(REPO_ROOT).as_posix()] = names
  return imported


def test_data_never_imports_jax():
  for module, names in _imported_top_level_names("data").items():
    assert not {"jax", "jaxlib", "flax", "sepconv_jax", "pallas_kernels"} & names, module


def test_pallas_kernels_import_statements_name_only_jax_and_the_standard_library():
  for module, names in _imported_top_level_names("pallas_kernels").items():
    third_party = names - set(sys.stdlib_module_names) - {"__future__", "pallas_kernels"}
    assert third_party <= {"jax"}, (module, third_party)
