"""The recipe's own lm-eval task directories (the eval stage's
``include_path``): the files whose content keys the stage, and the Python
they run.

A task YAML can name Python with ``!function module.name`` (lm-eval imports
``module.py`` next to the YAML, or any path the name spells), so a directory
holding Python files or ``!function`` tags runs code the recipe names: the
engine then wants ``--trust-code``.  A directory inside an installed package
(the bundled ``recipes/tasks``, lm-eval's own tasks) is trusted as the package
is.  Nothing heavy is imported: these run at validate time."""

from __future__ import annotations

import site
import sysconfig
from pathlib import Path

#: what in a task YAML makes lm-eval import Python
FUNCTION_TAG = "!function"

#: files lm-eval or Python write into a task directory while it is used (never read as the task)
_WRITTEN_BY_PYTHON = ("__pycache__",)


def installed_package_dirs() -> list[Path]:
    """Where installed packages live: the site-packages directories and the
    bundled recipes package (an editable install keeps it in the checkout)."""
    import recipe_runner_recipes

    paths = sysconfig.get_paths()
    roots = {paths["purelib"], paths["platlib"], *site.getsitepackages(), site.getusersitepackages()}
    return [Path(r).resolve() for r in sorted(roots)] + [Path(recipe_runner_recipes.__file__).resolve().parent]


def task_files(directory: Path) -> list[Path]:
    """The files of a task directory, sorted, without Python's byte-code caches."""
    return sorted(f for f in directory.rglob("*") if f.is_file() and not any(p in _WRITTEN_BY_PYTHON for p in f.parts))


def task_dir_inputs(include_path: list[str]) -> dict[str, Path]:
    """``include_path.<i>`` -> the directory's first file and
    ``include_path.<i>/<relative name>`` -> each of its files (the data
    stages' convention): the key covers what the tasks are, not where the
    directory is nor the byte code Python writes into it while the stage runs."""
    out: dict[str, Path] = {}
    for i, entry in enumerate(include_path):
        directory = Path(entry).expanduser()
        files = task_files(directory) if directory.is_dir() else []
        if files:
            out[f"include_path.{i}"] = files[0]
        out.update({f"include_path.{i}/{f.relative_to(directory).as_posix()}": f for f in files})
    return out


def task_dir_code(include_path: list[str]) -> dict[str, str]:
    """``include_path.<i>`` -> what runs, for each directory outside the
    installed packages that holds Python files or ``!function`` tags."""
    trusted = installed_package_dirs()
    out: dict[str, str] = {}
    for i, entry in enumerate(include_path):
        directory = Path(entry).expanduser()
        if not directory.is_dir() or any(directory.resolve().is_relative_to(t) for t in trusted):
            continue
        code = runs_python(directory)
        if code:
            out[f"include_path.{i}"] = f"the lm-eval task directory {entry} runs Python ({code})"
    return out


def runs_python(directory: Path) -> str:
    """What in ``directory`` lm-eval would run: its Python files and the YAML
    files with ``!function`` tags, named (at most three); '' when nothing."""
    names = [f.relative_to(directory).as_posix() for f in task_files(directory) if _holds_code(f)]
    if not names:
        return ""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _holds_code(f: Path) -> bool:
    if f.suffix == ".py":
        return True
    if f.suffix not in (".yaml", ".yml"):
        return False
    try:
        return FUNCTION_TAG in f.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
