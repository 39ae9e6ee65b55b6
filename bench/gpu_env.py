"""What bench/gpu_check.sh needs to know about the Python it runs with, before anything is installed:

    python bench/gpu_env.py report                 # python, platform, torch / CUDA / device, key versions
    python bench/gpu_env.py missing --only a,b     # requirements not satisfied here, one per line (pip syntax)
    python bench/gpu_env.py installed              # {distribution: version} of everything installed here
    python bench/gpu_env.py wheels DIR --only a,b  # the wheels in DIR to install here (see wheels_to_install)

`missing` reads the requirements from pyproject.toml (the project need not be installed yet) and checks
them against the installed distributions, so the torch and transformers already on a GPU machine are
used when their versions satisfy the project's.  Two sets:

- ``--set full``: every dependency in pyproject.toml, plus the extras the selected recipes need
  (b: bitsandbytes; c: bitsandbytes, gptqmodel; d: deepspeed);
- ``--set runtime`` (default): the dependencies the GPU recipes import when they run (all but NOT_AT_RUNTIME
  below, found by tracing the imports of `bench/gpu_check.sh --smoke`), plus those extras; pip still
  installs each one's own dependencies.  It leaves out lm-eval (with scikit-learn, scipy, nltk,
  sacrebleu, ...) and datatrove: on a machine with nothing but torch, 132 MB of wheels instead of ~230.

Only the standard library and pip's vendored `packaging` are used: this runs before any install.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: GPU-only packages (from the project's `gpu` / `gptq` extras) each recipe needs
RECIPE_EXTRAS = {"a": [], "b": ["bitsandbytes"], "c": ["bitsandbytes", "gptqmodel"], "d": ["deepspeed"]}

#: the project's dependencies that the GPU recipes never import: a trace of `bench/gpu_check.sh --smoke`
#: (every top-level module in sys.modules of every `recipe` process, mapped to its distribution;
#: 2026-11, transformers 5.24) imported all the others.  lm-eval runs only for `eval` tasks, datatrove
#: only for the Gopher / C4 / FineWeb filters, datasketch only for near-duplicate removal.
NOT_AT_RUNTIME = {"lm-eval", "datatrove", "datasketch"}


def _packaging():
    try:
        from packaging.markers import default_environment
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
        from pip._vendor.packaging.version import Version  # type: ignore[no-redef]
    return Requirement, Version, default_environment


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip vendors tomli
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(path.read_text())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(keys: list[str], which: str) -> list[str]:
    """Requirement strings for the selected recipes: the project's (all, or the runtime set) + extras."""
    Requirement, _, _ = _packaging()
    project = _toml(ROOT / "pyproject.toml")["project"]
    deps = list(project["dependencies"])
    if which == "runtime":
        deps = [d for d in deps if canonical(Requirement(d).name) not in NOT_AT_RUNTIME]
    extras = {canonical(n) for k in keys for n in RECIPE_EXTRAS.get(k, [])}
    for group in project.get("optional-dependencies", {}).values():
        for d in group:
            name = canonical(Requirement(d).name)
            if name in extras:
                deps.append(d)
                extras.discard(name)
    return deps


def unsatisfied(requirements: list[str]) -> list[tuple[str, str]]:
    """(requirement, why) for each requirement the installed distributions do not satisfy."""
    Requirement, Version, default_environment = _packaging()
    env = default_environment()
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            out.append((text, "not installed"))
            continue
        if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            out.append((text, f"installed {have}"))
    return out


def wheels_to_install(folder: Path, keys: list[str], which: str) -> list[Path]:
    """The wheels of ``folder`` (and its subfolders) to install with --no-deps: those of distributions not
    installed here, and those that bring a version of an unsatisfied requirement.  bench/gpu_wheels.py
    resolved the folder's closure for this machine, so installing them without a resolver is
    consistent, and works when a large closure comes in several transfers (each part installs on its own)."""
    Requirement, _, _ = _packaging()
    wanted = {canonical(Requirement(r).name) for r, _ in unsatisfied(project_requirements(keys, which))}
    out = []
    for wheel in sorted(folder.rglob("*.whl")):
        name = canonical(wheel.name.split("-")[0])
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(wheel)
            continue
        if name in wanted:
            out.append(wheel)
    return out


def report() -> dict:
    info: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "in_venv": sys.prefix != sys.base_prefix,
    }
    for dist in ("torch", "transformers", "datasets", "accelerate", "bitsandbytes", "gptqmodel", "deepspeed"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device"] = torch.cuda.get_device_name(0)
            info["device_count"] = torch.cuda.device_count()
            info["capability"] = f"{props.major}.{props.minor}"
            info["memory_gib"] = round(props.total_memory / 2**30, 1)
            info["bf16"] = torch.cuda.is_bf16_supported()
    except ImportError as e:
        info["torch_import_error"] = str(e)
    try:
        info["recipe_runner"] = metadata.version("recipe-runner")
    except metadata.PackageNotFoundError:
        info["recipe_runner"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("report", help="one JSON object: python, platform, torch/CUDA/device, versions")
    sub.add_parser("installed", help="one JSON object: every installed distribution and its version")
    w = sub.add_parser("wheels", help="the wheels of a folder to install here with --no-deps, one per line")
    w.add_argument("folder", type=Path)
    w.add_argument("--only", default="a,b,c,d")
    w.add_argument("--set", dest="which", choices=["full", "runtime"], default="runtime")
    m = sub.add_parser("missing", help="unsatisfied requirements, one per line")
    m.add_argument("--only", default="a,b,c,d", help="recipes whose GPU extras are needed")
    m.add_argument("--set", dest="which", choices=["full", "runtime"], default="runtime")
    m.add_argument("--why", action="store_true", help="append '  # reason' to each line")
    a, _ = ap.parse_known_args(argv)
    if a.cmd == "report":
        print(json.dumps(report()))
        return 0
    if a.cmd == "installed":
        dists = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
        print(json.dumps(dict(sorted(dists.items()))))
        return 0
    keys = [k.strip() for k in a.only.split(",") if k.strip()]
    if a.cmd == "wheels":
        for wheel in wheels_to_install(a.folder, keys, a.which):
            print(wheel)
        return 0
    for req, why in unsatisfied(project_requirements(keys, a.which)):
        print(f"{req}  # {why}" if a.why else req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
