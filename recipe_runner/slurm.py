"""Multi-node launches through Slurm: the ``srun`` command that starts a
distributed stage's ranks on every node of an allocation (torchrun with a c10d
rendezvous, or ``accelerate launch``), and the sbatch script ``recipe submit``
writes.  Nothing here imports torch: it only builds commands."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import RunError
from .launch import LaunchSpec

#: the rendezvous port when the launch block names none
DEFAULT_PORT = 29500


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a Slurm node list, in order, as ``scontrol show
    hostnames`` prints them: ``gpu[01-03,07],cpu5`` -> gpu01 gpu02 gpu03 gpu07
    cpu5 (zero padding kept; several bracket groups in one name expand as a
    product: ``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2)."""
    hosts: list[str] = []
    for name in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_name(name, nodelist))
    return hosts


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _expand_name(name: str, whole: str) -> list[str]:
    m = re.match(r"([^\[\]]*)\[([^\[\]]*)\](.*)$", name)
    if not m:
        if "[" in name or "]" in name:
            raise ValueError(f"cannot parse the Slurm node list {whole!r}: unbalanced brackets in {name!r}")
        return [name]
    prefix, ranges, rest = m.groups()
    tails = _expand_name(rest, whole) if rest else [""]
    return [prefix + item + tail for item in _expand_ranges(ranges, whole) for tail in tails]


def _expand_ranges(ranges: str, whole: str) -> list[str]:
    items: list[str] = []
    for part in ranges.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"cannot parse the Slurm node list {whole!r}: bad range {part!r}")
        if not sep:
            items.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"cannot parse the Slurm node list {whole!r}: descending range {part!r}")
        width = len(lo) if lo.startswith("0") else 0
        items.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return items


def allocation_hosts(spec: LaunchSpec, env: Mapping[str, str]) -> list[str]:
    """The hosts of the Slurm allocation this process runs in, or a RunError
    saying why ``spec.nodes`` nodes of it cannot be used."""
    need = f"launch.nodes={spec.nodes} runs through srun inside a Slurm allocation of at least {spec.nodes} nodes"
    hint = "start the recipe from an sbatch script or salloc (`recipe submit RECIPE --nodes N` writes one)"
    if not env.get("SLURM_JOB_ID"):
        raise RunError(f"{need}, and this is not one (SLURM_JOB_ID is not set): {hint}")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise RunError(f"{need}: SLURM_JOB_NODELIST is not set in Slurm job {env['SLURM_JOB_ID']}")
    try:
        hosts = expand_nodelist(nodelist)
    except ValueError as e:
        raise RunError(str(e)) from None
    count = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    hosts = hosts[: int(count)] if count and count.isdigit() else hosts
    if len(hosts) < spec.nodes:
        raise RunError(
            f"{need}; Slurm job {env['SLURM_JOB_ID']} has {len(hosts)} ({nodelist}): "
            f"lower launch.nodes or allocate more nodes (sbatch --nodes={spec.nodes})"
        )
    return hosts


def multi_node_command(spec: LaunchSpec, worker: list[str], env: Mapping[str, str]) -> list[str]:
    """The command the orchestrating process runs (on the first node of a Slurm allocation) to start
    `worker` (e.g. ["-m", "recipe_runner.rank_worker", "/path/job.json"]) on spec.nodes nodes x
    spec.per_node() processes: srun with one task per node, each starting torchrun (c10d rendezvous on
    the first node's host, a port, rdzv-id from SLURM_JOB_ID) or `accelerate launch` with machine rank
    from SLURM_NODEID.  Raises recipe_runner.errors.RunError with a clear message when not inside a
    Slurm allocation with at least spec.nodes nodes."""
    allocated = allocation_hosts(spec, env)
    hosts = allocated[: spec.nodes]
    srun = shutil.which("srun", path=env.get("PATH"))
    if srun is None:
        raise RunError(
            f"launch.nodes={spec.nodes} needs `srun`, and it is not on PATH (inside Slurm job {env['SLURM_JOB_ID']})"
        )
    head = hosts[0]
    port = spec.port or DEFAULT_PORT
    step = [
        srun,
        f"--nodes={spec.nodes}",
        f"--ntasks={spec.nodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",  # one failing node ends the step on every node
    ]
    if len(hosts) < len(allocated):
        step.append("--nodelist=" + ",".join(hosts))  # the rendezvous host must be one of the step's nodes
    cpus = env.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():  # srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05)
        step.append(f"--cpus-per-task={cpus}")
    if spec.launcher == "accelerate":
        return step + _accelerate(spec, worker, head, port)
    return step + _torchrun(spec, worker, head, port, env["SLURM_JOB_ID"])


def _torchrun(spec: LaunchSpec, worker: Sequence[str], head: str, port: int, job_id: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={spec.nodes}",
        f"--nproc-per-node={spec.per_node()}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={_host_port(head, port)}",
        f"--rdzv-id={job_id}",
        "--max-restarts=0",  # a failing rank fails the node (and srun then the step), no retries
        "--monitor-interval=0.5",
        *worker,
    ]


def _accelerate(spec: LaunchSpec, worker: Sequence[str], head: str, port: int) -> list[str]:
    """``accelerate launch`` on each node; its machine rank is the node's
    SLURM_NODEID, which srun sets per task, so a shell reads it there."""
    before = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_machines={spec.nodes}",
        f"--num_processes={spec.world_size()}",
        f"--main_process_ip={head}",
        f"--main_process_port={port}",
        "--max_restarts=0",
        "--monitor_interval=0.5",
    ]
    line = f'exec {shlex.join(before)} --machine_rank="$SLURM_NODEID" {shlex.join(worker)}'
    return ["/bin/sh", "-c", line]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_sbatch(
    recipe: Path,
    *,
    job_name: str,
    nodes: int,
    gpus_per_node: int,
    workdir: Path,
    logs_dir: Path,
    overrides: Sequence[str] = (),
    run_options: Sequence[str] = (),
    partition: str | None = None,
    time: str | None = None,
    account: str | None = None,
    cpus_per_node: int | None = None,
    chdir: Path | None = None,
) -> str:
    """The sbatch script of ``recipe submit``: one task per node; its body
    runs ``recipe run`` once, on the first node, whose distributed stages then
    start their ranks on every node through srun.  Paths are made absolute
    (the job may start elsewhere)."""
    directives = [
        f"--job-name={job_name}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={gpus_per_node}",
        f"--cpus-per-task={cpus_per_node or 4 * gpus_per_node}",
        f"--output={logs_dir.resolve() / 'slurm-%j.out'}",
        f"--chdir={(chdir or Path.cwd()).resolve()}",
    ]
    directives += [f"--{k}={v}" for k, v in (("partition", partition), ("time", time), ("account", account)) if v]
    command = [
        sys.executable,
        "-m",
        "recipe_runner.cli",
        "run",
        str(recipe.resolve()),
        "--workdir",
        str(workdir.resolve()),
        *(a for o in overrides for a in ("--set", o)),
        "--set",
        f"launch.nodes={nodes}",
        "--set",
        f"launch.processes={gpus_per_node}",
        *run_options,
    ]
    lines = ["#!/bin/bash", *(f"#SBATCH {shlex.quote(d)}" for d in directives), ""]
    lines += [
        "# Written by `recipe submit`.  `recipe run` runs once, here on the first node; every distributed",
        "# stage starts its ranks on all nodes through srun (torchrun rendezvous on this node).  The run",
        "# directory must be on a filesystem every node sees.",
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
        f"exec {shlex.join(command)}",
        "",
    ]
    return "\n".join(lines)
