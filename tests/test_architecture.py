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


def _project_imports(folder: str) -> dict[str, set[str]]:
  """{module file: the project modules it imports (dotted, e.g. 'sepconv_jax.network.model')},
  from every import statement, including those inside functions."""
  imported = {}
  for path in sorted((REPO_ROOT / folder).rglob("*.py")):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module)
        names |= {f"{node.module}.{alias.name}" for alias in node.names}
    imported[path.relative_to(REPO_ROOT).as_posix()] = {
        n for n in names if n.split(".")[0] in ("sepconv_jax", "sepconv_data", "pallas_kernels")}
  return imported


# Each subpackage of sepconv_jax, and what it must never import: the floors go network ->
# inference -> evaluation -> training -> commands, and inference needs only the jump-cut test of
# the training-data package.
FORBIDDEN = {
    "sepconv_jax/network": ("sepconv_jax.inference", "sepconv_jax.evaluation",
                            "sepconv_jax.training", "sepconv_jax.commands", "sepconv_data"),
    "sepconv_jax/inference": ("sepconv_jax.evaluation", "sepconv_jax.training",
                              "sepconv_jax.commands"),
    "sepconv_jax/evaluation": ("sepconv_jax.training", "sepconv_jax.commands"),
    "sepconv_jax/training": ("sepconv_jax.commands",),
}
INFERENCE_MAY_USE_FROM_DATA = ("sepconv_data.cuts", "sepconv_data.files", "sepconv_data.flow")


def test_subpackages_import_only_the_floors_below_them():
  for folder, forbidden in FORBIDDEN.items():
    for module, names in _project_imports(folder).items():
      bad = {n for n in names if n.startswith(forbidden)}
      assert not bad, (module, bad)


def test_inference_needs_nothing_of_the_training_data_package_but_its_light_helpers():
  for module, names in _project_imports("sepconv_jax/inference").items():
    data = {n for n in names if n.startswith("sepconv_data") and n != "sepconv_data"
            and not n.startswith(INFERENCE_MAY_USE_FROM_DATA)}
    assert not data, (module, data)
  modules = _modules_after_import("import sepconv_jax.inference.pipelines")
  assert not {"tensorflow", "tensorflow_datasets", "multiprocessing", "tqdm.contrib",
              "sepconv_data.extract", "sepconv_jax.training"} & modules


def test_the_benchmarks_do_not_import_the_tests():
  for module, names in _imported_top_level_names("benchmarks").items():
    assert "tests" not in names, module
