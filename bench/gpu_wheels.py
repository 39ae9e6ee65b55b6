"""Build the wheel folders bench/gpu_check.sh installs from on a GPU machine without a package registry.
Run it on a machine that has one (any OS with pip; nothing is installed here):

    python bench/gpu_wheels.py --only a,b --python-version 3.11 --have installed.json --out .whl/ab
    python bench/gpu_wheels.py --only c,d --python-version 3.11 --have installed.json --out .whl/cd

- the requirements are bench/gpu_env.py's (``--deps runtime``, the default: what the GPU recipes import,
  plus bitsandbytes for b and c, gptqmodel for c, deepspeed for d) and setuptools>=77 for the project's
  editable install;
- they are resolved for the GPU machine's Python and platform (``pip install --dry-run --report
  --ignore-installed --only-binary=:all: --python-version --platform``: metadata only, nothing large is
  fetched), and what that machine already has is left out: ``--have`` is the JSON that
  `OUT=... bench/gpu_check.sh --env-only` writes there (`bench/gpu_env.py installed`); torch, triton and
  the nvidia-* CUDA wheels are always left out (a CUDA torch is ~1 GB: the machine must have one);
- a requirement that exists only as a source distribution (DeepSpeed; GPTQModel 7.x) is built into a
  wheel first with ``pip wheel --no-deps`` (DeepSpeed with DS_BUILD_OPS=0: its ops are compiled just in
  time on the GPU machine, and the recipes need none of them); the result is a pure-Python wheel;
- the rest is fetched with ``pip download --no-deps`` of the exact resolved versions, and the folder is
  split into parts of at most ``--max-mib`` (default 60) when it is larger, one part per transfer.

``--pip-arg`` passes options to every pip call, e.g. ``--pip-arg=--no-index --pip-arg=--find-links=DIR``
to resolve against a local folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_env import _packaging, canonical, project_requirements

#: never carried: the GPU machine's own CUDA build of torch and its CUDA libraries
ALWAYS_EXCLUDE = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64")
NO_DIST = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")


def pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args]
    print("  $ pip " + " ".join(args), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def target_args(a: argparse.Namespace) -> list[str]:
    out = ["--only-binary=:all:", "--python-version", a.python_version, "--implementation", "cp"]
    for p in a.platform or PLATFORMS:
        out += ["--platform", p]
    out += ["--platform", "manylinux2014_x86_64"] if not a.platform else []
    return out + a.pip_arg


def resolve(reqs: list[str], a: argparse.Namespace, links: list[Path], tmp: Path) -> list[dict[str, str]]:
    """The resolved closure for the target; builds sdist-only requirements into wheels on the way."""
    for _ in range(12):
        report = tmp / "report.json"
        extra = [f"--find-links={d}" for d in links]
        proc = pip(
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--target",
            str(tmp / "target"),
            "--report",
            str(report),
            *target_args(a),
            *extra,
            *reqs,
        )
        if proc.returncode == 0:
            items = json.loads(report.read_text())["install"]
            return [{"name": canonical(i["metadata"]["name"]), "version": i["metadata"]["version"]} for i in items]
        m = NO_DIST.search(proc.stderr)
        if not m:
            sys.exit(f"gpu_wheels: pip could not resolve the requirements:\n{proc.stderr[-3000:]}")
        build(m.group(1), reqs, a, links[0])
    sys.exit("gpu_wheels: too many source-only requirements")


def build(name: str, reqs: list[str], a: argparse.Namespace, into: Path) -> None:
    """A wheel from a source distribution (pure Python: it installs on any platform)."""
    spec = next((r for r in reqs if canonical(re.split(r"[<>=!~ ;\[]", r)[0]) == canonical(name)), name)
    print(f"gpu_wheels: {name} has no wheel for the target; building one from its source distribution")
    env = dict(os.environ, DS_BUILD_OPS="0", BUILD_CUDA_EXT="0")
    proc = pip("wheel", "--no-deps", "--wheel-dir", str(into), *a.pip_arg, spec, env=env)
    if proc.returncode != 0:
        sys.exit(f"gpu_wheels: building {spec} failed:\n{proc.stderr[-3000:]}")
    built = [w.name for w in into.glob("*.whl") if canonical(w.name.split("-")[0]) == canonical(name)]
    if not any(w.endswith("-none-any.whl") for w in built):
        sys.exit(f"gpu_wheels: {built} is not a pure-Python wheel; build it on a machine like the GPU machine")


def present(name: str, have: dict[str, str], reqs: list[str]) -> bool:
    """The GPU machine has this distribution in a version the project accepts (a direct requirement's
    specifier is checked; for the others any installed version is taken to do)."""
    if name not in have:
        return False
    Requirement, Version, _ = _packaging()
    for text in reqs:
        req = Requirement(text)
        if canonical(req.name) == name and req.specifier:
            return req.specifier.contains(Version(have[name]), prereleases=True)
    return True


def split(files: list[Path], max_bytes: int) -> list[list[Path]]:
    """First-fit decreasing into parts of at most max_bytes (a larger single file gets a part alone)."""
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for f in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        size = f.stat().st_size
        i = next((i for i, s in enumerate(sizes) if s + size <= max_bytes), None)
        if i is None:
            parts.append([f])
            sizes.append(size)
        else:
            parts[i].append(f)
            sizes[i] += size
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="a,b,c,d", help="recipes the folder is for (their GPU extras)")
    ap.add_argument("--deps", choices=["runtime", "full"], default="runtime")
    ap.add_argument("--python-version", required=True, help="the GPU machine's Python, e.g. 3.11")
    ap.add_argument("--platform", action="append", help=f"wheel platform tags (default {', '.join(PLATFORMS)})")
    ap.add_argument("--have", type=Path, help="JSON {distribution: version} of the GPU machine (gpu_env installed)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-mib", type=float, default=60.0, help="largest part (one transfer); default 60")
    ap.add_argument("--pip-arg", action="append", default=[], help="extra option for every pip call")
    a = ap.parse_args(argv)
    keys = [k.strip() for k in a.only.split(",") if k.strip()]
    have = {canonical(k): v for k, v in json.loads(a.have.read_text()).items()} if a.have else {}
    reqs = project_requirements(keys, a.deps) + ["setuptools>=77"]
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        built = tmp / "built"
        built.mkdir()
        closure = resolve(reqs, a, [built], tmp)
        carry = [d for d in closure if not ALWAYS_EXCLUDE.match(d["name"]) and not present(d["name"], have, reqs)]
        left = sorted({d["name"] for d in closure} - {d["name"] for d in carry})
        print(f"gpu_wheels: {len(closure)} distributions resolved; already there or never carried: {', '.join(left)}")
        if "torch" not in have and a.have:
            print("gpu_wheels: warning: the GPU machine has no torch; a CUDA build cannot be carried (~1 GB)")
        for w in built.glob("*.whl"):
            if any(canonical(w.name.split("-")[0]) == d["name"] for d in carry):
                shutil.copy2(w, a.out / w.name)
        from_built = {canonical(w.name.split("-")[0]) for w in a.out.glob("*.whl")}
        pins = [f"{d['name']}=={d['version']}" for d in carry if d["name"] not in from_built]
        if pins:
            proc = pip("download", "--no-deps", "--dest", str(a.out), *target_args(a), *pins)
            if proc.returncode != 0:
                sys.exit(f"gpu_wheels: pip download failed:\n{proc.stderr[-3000:]}")
    files = sorted(a.out.glob("*.whl"))
    total = sum(f.stat().st_size for f in files)
    for f in sorted(files, key=lambda p: -p.stat().st_size):
        print(f"  {f.stat().st_size / 2**20:7.1f} MiB  {f.name}")
    print(f"gpu_wheels: {len(files)} wheels, {total / 2**20:.1f} MiB in {a.out}")
    max_bytes = int(a.max_mib * 2**20)
    if total > max_bytes:
        parts = split(files, max_bytes)
        for i, part in enumerate(parts, 1):
            d = a.out / f"part{i}"
            d.mkdir(exist_ok=True)
            for f in part:
                f.rename(d / f.name)
            print(f"gpu_wheels: {d}: {sum(f.stat().st_size for f in d.glob('*.whl')) / 2**20:.1f} MiB")
        print("gpu_wheels: more than one transfer: carry one part per call and install each with --wheels PART")
    return 0


if __name__ == "__main__":
    sys.exit(main())
