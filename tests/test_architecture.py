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


def test_engine_never_imports_the_label_studio_side():
    for path in (PACKAGE / "engine").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert not target.startswith("..ls") and "sam3_backend.ls" not in target, (path, target)
                assert not target.startswith("..service") and not target.startswith("..app"), (path, target)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("sam3_backend.ls"), (path, alias.name)
