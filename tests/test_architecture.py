"""The package layout holds: the project's own `data` is imported, and imports flow one way
(`pallas_kernels` needs only jax, `data` never imports jax)."""

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


def test_the_project_data_package_is_the_one_imported():
  import data  # pylint: disable=import-outside-toplevel
  assert pathlib.Path(data.__file__).resolve().parent == REPO_ROOT / "data"


def test_pallas_kernels_imports_only_jax():
  modules = _modules_after_import("import pallas_kernels")
  assert not {"flax", "tensorflow", "sepconv_jax", "data", "cv2", "torch"} & modules


def _imported_top_level_names(package: str) -> dict[str, set[str]]:
  """{module file: top-level names it imports}, read from the source (TensorFlow itself imports
  jax when it is installed, so only the project's own import statements can be checked)."""
  imported = {}
  for path in sorted((REPO_ROOT / package).rglob("*.py")):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split(".")[0])
    imported[path.name] = names
  return imported


def test_data_never_imports_jax():
  for module, names in _imported_top_level_names("data").items():
    assert not {"jax", "jaxlib", "flax", "sepconv_jax", "pallas_kernels"} & names, module


def test_pallas_kernels_import_statements_name_only_jax_and_the_standard_library():
  for module, names in _imported_top_level_names("pallas_kernels").items():
    third_party = names - set(sys.stdlib_module_names) - {"__future__", "pallas_kernels"}
    assert third_party <= {"jax"}, (module, third_party)
