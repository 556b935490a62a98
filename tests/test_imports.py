"""`import vfs` stays light (no gradio, no huggingface_hub), every public name resolves, and the app's
plain-function modules never import gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vfs

LIGHT = """
import sys
import vfs
vfs.Preprocess, vfs.load_model, vfs.FeatureExtractor, vfs.mask_to_grid, vfs.search
heavy = sorted(name for name in ("gradio", "huggingface_hub", "datasets", "matplotlib") if name in sys.modules)
print(",".join(heavy))
"""


def test_import_vfs_leaves_gradio_and_the_hub_out():
    # a fresh interpreter, so that other tests' imports do not count
    result = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_every_public_name_resolves():
    missing = []
    for name in vfs.__all__:
        try:
            getattr(vfs, name)
        except (AttributeError, ImportError) as error:
            missing.append(f"{name}: {error}")
    assert not missing
    assert len(set(vfs.__all__)) == len(vfs.__all__)


def test_type_checkers_see_exactly_the_public_names():
    # `__dir__` adds `__all__`, so compare against the source: the names type checkers import (the
    # eager imports and the `if TYPE_CHECKING:` block) are the names loaded lazily at run time
    tree = ast.parse(Path(vfs.__file__).read_text())
    imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("vfs") for alias in node.names}
    assert imported == set(vfs.__all__)
    assert {name: getattr(vfs, name).__module__ for name in vfs._LAZY} == vfs._LAZY  # defined where listed


CALLABLE = """
import vfs
from vfs.retrieval.window import Match  # importing the defining module first must not shadow anything
vfs.Match, vfs.BestWindows
import importlib, pkgutil
for info in pkgutil.walk_packages(vfs.__path__, "vfs."):  # every module and subpackage
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
bad = [name for name in ("search", "best_windows", "load_model", "mask_to_grid", "open_cache", "build_cache")
       if not callable(getattr(vfs, name)) or type(getattr(vfs, name)).__name__ == "module"]
print(",".join(bad))
"""


def test_public_functions_stay_functions_after_their_modules_are_imported():
    # a submodule named like a public function would replace it on `vfs` once imported
    result = subprocess.run([sys.executable, "-c", CALLABLE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# The layers of `vfs`, lowest first: a module may import its own layer and the ones before it only.
LAYERS = [
    ("vfs.errors", "vfs.source", "vfs.cluster"),
    ("vfs.datasets", "vfs.models"),
    ("vfs.masks",),
    ("vfs.cache",),
    ("vfs.retrieval",),
    ("vfs.analysis",),
    ("vfs.demo", "vfs.cli", "vfs.__main__", "vfs"),
]


def _layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or (p != "vfs" and module.startswith(p + ".")) for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _vfs_imports(path: Path, root: Path) -> set[str]:
    """Every `vfs` module that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module == "vfs":  # `from vfs import x`: a submodule, the public surface or the version
                found |= {f"vfs.{a.name}" if (root / a.name).is_dir() or (root / f"{a.name}.py").exists()
                          else "vfs" for a in node.names if a.name != "__version__"}
            else:
                found.add(node.module or "")
    return {name for name in found if name == "vfs" or name.startswith("vfs.")}


def test_lower_layers_never_import_upper_ones():
    root = Path(vfs.__file__).parent
    wrong = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "vfs":  # the public surface re-exports from every layer
            continue
        wrong += [f"{module} imports {name}" for name in _vfs_imports(path, root) if _layer(name) > _layer(module)]
    assert not wrong, wrong


# The app modules that build the page; every other app module is plain functions, testable without gradio.
GRADIO_MODULES = {"app.ui", "app.search_tab", "app.search_actions", "app.compare_tab", "app.analysis_tab", "app.wiring",
                  "app.__main__"}

NO_GRADIO = """
import importlib, pkgutil, sys
import app
for info in sorted(pkgutil.iter_modules(app.__path__, "app."), key=lambda info: info.name):
    if info.name not in {gradio_modules!r}:
        importlib.import_module(info.name)
        if "gradio" in sys.modules:  # checked after each import, so the culprit is named
            print(info.name)
            break
"""


def test_app_handler_modules_never_import_gradio():
    # a fresh interpreter: other tests load gradio into this one's sys.modules
    code = NO_GRADIO.format(gradio_modules=GRADIO_MODULES)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(vfs.__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{result.stdout.strip()} imports gradio: keep it in {sorted(GRADIO_MODULES)}"
