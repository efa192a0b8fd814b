"""The architecture rules, checked: the Label Studio side never imports torch; the engine never
imports the Label Studio side; importing the app does no heavy work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sam3_backend"


def _imports_in_subprocess(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_label_studio_side_and_app_import_without_torch():
    modules = sorted(f"sam3_backend.ls.{p.stem}" for p in (PACKAGE / "ls").glob("*.py") if p.stem != "__init__")
    modules += ["sam3_backend.app", "sam3_backend.service", "sam3_backend.config", "sam3_backend.types"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    assert _imports_in_subprocess(code) == "False"


def test_creating_the_app_does_not_load_a_model():
    code = (
        "import sys\n"
        "from sam3_backend.app import create_app\n"
        "from sam3_backend.config import Settings\n"
        "app = create_app(Settings.from_env({}), engine_factory=lambda s: None, load_in_background=False)\n"
        "print('transformers' in sys.modules)"
    )
    assert _imports_in_subprocess(code) == "False"


def imported_modules(path: Path, package_root: Path = PACKAGE) -> set[str]:
    """Absolute names of every module (and ``from m import name`` target) a file imports, with
    relative imports resolved: ``from .. import ls`` in sam3_backend/engine/x.py -> sam3_backend.ls."""
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(PACKAGE)), name)
        for path in (PACKAGE / folder).rglob("*.py")
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


GLUE = ("sam3_backend.service", "sam3_backend.app", "sam3_backend.cli", "sam3_backend.jobs")


def test_engine_never_imports_the_label_studio_side_or_the_glue():
    assert _violations("engine", ("sam3_backend.ls",) + GLUE) == []


def test_label_studio_side_never_imports_the_engine_or_the_glue():
    assert _violations("ls", ("sam3_backend.engine",) + GLUE) == []


def test_the_import_guard_sees_every_spelling(tmp_path):
    """The guard itself: each way of importing the Label Studio side is caught."""
    spellings = ["from .. import ls", "from ..ls import media", "from sam3_backend import ls",
                 "import sam3_backend.ls.media", "from sam3_backend.ls.results import encode_regions",
                 "from ..ls.results import encode_regions"]
    probe = tmp_path / "sam3_backend" / "engine" / "probe.py"
    probe.parent.mkdir(parents=True)
    for code in spellings:
        probe.write_text(code + "\n")
        names = imported_modules(probe, tmp_path / "sam3_backend")
        assert any(n == "sam3_backend.ls" or n.startswith("sam3_backend.ls.") for n in names), (code, names)


def test_test_files_have_unique_names():
    """pytest imports test modules by basename (no packages under tests/): two files with one
    name break collection of the whole suite, which running folders one at a time never shows."""
    names = [p.name for p in (PACKAGE.parent / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
