"""The layout rules docs/architecture.md states, kept by a test: no function
in recipe_runner/ or stages/ over 60 lines, and no stage family importing
another (what two families share lives in stages/common/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
STAGES_PACKAGE = "recipe_runner_stages"  # stages/ as installed (pyproject's package-dir)


def _modules(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py"))


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in _modules("recipe_runner", "stages"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into helpers named for what they do:\n" + "\n".join(long)


def _imported_families(source: str, package: list[str]) -> set[str]:
    """The stage families (first package under stages/) that a module of
    ``package`` (path parts under stages/) imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            else:
                target = (node.module or "").split(".")
                if target[0] != STAGES_PACKAGE:
                    continue
                target = target[1:]
            if target:
                found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == STAGES_PACKAGE and len(names) > 1:
                    found.add(names[1])
    return found


def test_no_stage_family_imports_another():
    crossing = []
    for path in _modules("stages"):
        parts = path.relative_to(ROOT / "stages").parts
        if len(parts) < 2:  # stages/__init__.py
            continue
        family = parts[0]
        others = _imported_families(path.read_text(), list(parts[:-1])) - {family, "common"}
        if others:
            crossing.append(f"stages/{'/'.join(parts)} imports {sorted(others)}")
    assert not crossing, "move what two families share to stages/common/:\n" + "\n".join(crossing)


def test_the_family_check_sees_a_crossing_import():
    """The import resolver itself: relative and absolute imports of another family are found."""
    source = "from ...data.arrow_io import x\nimport recipe_runner_stages.deploy.export\nfrom . import lora\n"
    assert _imported_families(source, ["train", "sft"]) == {"data", "deploy", "train"}
