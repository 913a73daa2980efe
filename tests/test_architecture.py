"""The import rules of HOUSE.md: ui → indexer → store, and each heavy library in the one package that owns it."""
import ast
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

PACKAGES = ("store", "indexer", "ui")


def imported_modules(path, *, top_level_only=False) -> set[str]:
    """Top-level names of the absolute imports in a file (module level only, if asked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_imports(package, **kwargs) -> dict[str, set[str]]:
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    assert files, f"no python files in {package}/"
    return {str(f.relative_to(REPO_ROOT)): imported_modules(f, **kwargs) for f in files}


# (package, modules it must never import)
FORBIDDEN = {
    "store": {"transformers", "streamlit", "indexer", "ui"},
    "indexer": {"streamlit", "ui", "faiss", "sqlite_utils"},
    "ui": {"transformers", "faiss", "sqlite_utils"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_forbidden_imports(package):
    offences = {path: sorted(names & FORBIDDEN[package]) for path, names in package_imports(package).items()}
    assert {path: names for path, names in offences.items() if names} == {}


def test_only_indexer_imports_transformers():
    importers = {path for package in PACKAGES for path, names in package_imports(package).items()
                 if "transformers" in names}
    assert importers, "the indexer is expected to import transformers somewhere"
    assert all(path.startswith("indexer/") for path in importers), importers


def test_store_keeps_torch_out_of_module_level():
    """torch may appear in store/ only behind the GPU exact-search fallback, never at import time."""
    offenders = [path for path, names in package_imports("store", top_level_only=True).items() if "torch" in names]
    assert offenders == []


def test_importing_the_store_loads_no_model_libraries():
    code = (
        "import pkgutil, importlib, sys, store\n"
        "for info in pkgutil.iter_modules(store.__path__): importlib.import_module('store.' + info.name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'streamlit', 'torch'})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_cli_imports_nothing_heavy_to_print_help():
    """`lookalike --help` and errors like a missing store must not wait for torch and transformers."""
    code = "import sys, indexer.cli; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "\
           "{'transformers', 'torch'})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
