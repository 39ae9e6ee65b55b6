"""The example recipes shipped inside the package (`recipe ls`, `recipe cp`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml


def examples_dir() -> Path:
    from importlib.resources import files

    try:
        return Path(str(files("recipe_runner_recipes")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "recipes"


def list_examples() -> list[tuple[str, str]]:
    out = []
    for p in sorted(examples_dir().glob("*.yaml")):
        try:
            desc = (yaml.safe_load(p.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            desc = "(unreadable)"
        out.append((p.stem, " ".join(str(desc).split())[:100]))
    return out


def example_path(name: str) -> Path | None:
    p = examples_dir() / f"{name.removesuffix('.yaml')}.yaml"
    return p if p.exists() else None


def copy_example(name: str, dest: Path) -> list[Path]:
    src = example_path(name)
    if src is None:
        raise FileNotFoundError(f"no example recipe '{name}'; see `recipe ls`")
    dest = Path(dest)
    target = dest / src.name if dest.is_dir() or str(dest).endswith("/") else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    written = []
    todo = [(src, target)]
    while todo:
        s, t = todo.pop()
        if t.exists():
            raise FileExistsError(f"{t} exists; not overwriting")
        shutil.copyfile(s, t)
        written.append(t)
        ext = (yaml.safe_load(s.read_text()) or {}).get("extends")
        for b in [ext] if isinstance(ext, str) else ext or []:
            bs = s.parent / b
            bt = t.parent / b
            if bs.exists() and not bt.exists():
                todo.append((bs, bt))
    return written
