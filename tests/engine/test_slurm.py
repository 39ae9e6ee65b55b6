"""Multi-node launches through Slurm, on this machine: a stand-in `srun`
(fake_slurm/srun, first on PATH) starts each "node" locally with the SLURM_*
environment real srun sets, so the real torchrun / accelerate c10d and static
rendezvous run across two node agents on 127.0.0.1.  And `recipe submit`: the
sbatch script it writes, and its submission through a stand-in `sbatch`."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe_runner.errors import RunError
from recipe_runner.launch import LaunchSpec
from recipe_runner.slurm import expand_nodelist, multi_node_command

FAKE = Path(__file__).parent / "fake_slurm"
WORKER = FAKE / "allreduce_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _slurm_env(nodes: int = 2, **extra: str) -> dict[str, str]:
    """A two-"node" allocation whose nodes are both this machine."""
    hosts = ["127.0.0.1", "localhost", "127.0.0.1"][:nodes]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{FAKE}{os.pathsep}{env['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="test",
        SLURM_JOB_NUM_NODES=str(nodes),
        SLURM_JOB_NODELIST=",".join(hosts),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def test_nodelist_compressed_syntax():
    assert expand_nodelist("gpu[01-03,07],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    assert expand_nodelist("node7") == ["node7"]
    assert expand_nodelist("a[8-11]") == ["a8", "a9", "a10", "a11"]
    assert expand_nodelist("x[098-101]") == ["x098", "x099", "x100", "x101"]
    assert expand_nodelist("r[1-2]n[1,3]") == ["r1n1", "r1n3", "r2n1", "r2n3"]
    assert expand_nodelist("gpu-a[1-2],gpu-b[10-11]-ib") == ["gpu-a1", "gpu-a2", "gpu-b10-ib", "gpu-b11-ib"]
    assert expand_nodelist("127.0.0.1,localhost") == ["127.0.0.1", "localhost"]
    for bad in ("gpu[01-03", "gpu01]", "gpu[3-1]", "gpu[a-b]"):
        with pytest.raises(ValueError, match="node list"):
            expand_nodelist(bad)


def test_refuses_to_launch_outside_a_big_enough_allocation(tmp_path):
    spec, worker = LaunchSpec(nodes=2), ["-m", "recipe_runner.rank_worker", "job.json"]
    with pytest.raises(RunError, match="not one \\(SLURM_JOB_ID is not set\\).*recipe submit"):
        multi_node_command(spec, worker, {"PATH": str(FAKE)})
    with pytest.raises(RunError, match="at least 3 nodes.*has 2 \\(127.0.0.1,localhost\\)"):
        multi_node_command(LaunchSpec(nodes=3), worker, _slurm_env())
    with pytest.raises(RunError, match="needs `srun`, and it is not on PATH"):
        multi_node_command(spec, worker, _slurm_env(PATH=str(tmp_path)))
    with pytest.raises(RunError, match="bad range"):
        multi_node_command(spec, worker, _slurm_env(SLURM_JOB_NODELIST="gpu[x]"))


def test_command_shape_for_a_real_cluster():
    env = _slurm_env(SLURM_JOB_NODELIST="gpu[07-09]", SLURM_JOB_NUM_NODES="3", SLURM_CPUS_PER_TASK="32")
    cmd = multi_node_command(LaunchSpec(nodes=2, processes=8), ["-m", "w", "job.json"], env)
    assert cmd[0] == str(FAKE / "srun")
    assert "--kill-on-bad-exit=1" in cmd and "--ntasks-per-node=1" in cmd and "--cpus-per-task=32" in cmd
    assert "--nodelist=gpu07,gpu08" in cmd  # fewer nodes than allocated: the rendezvous host must be in the step
    torchrun = cmd[cmd.index(sys.executable) :]
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu07:29500"} <= set(torchrun)
    assert "--rdzv-id=4242" in torchrun and torchrun[-3:] == ["-m", "w", "job.json"]


def _run_two_nodes(launcher: str, out: Path, **extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    spec = LaunchSpec(nodes=2, processes=1, launcher=launcher, port=_free_port())  # type: ignore[arg-type]
    env = _slurm_env(**extra)
    cmd = multi_node_command(spec, [str(WORKER), str(out)], env)
    t = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    return proc, time.monotonic() - t


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes_rendezvous_and_all_reduce(tmp_path, launcher):
    proc, _ = _run_two_nodes(launcher, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]  # (0 + 1) + (1 + 1): both nodes took part
    assert sorted(r["node"] for r in ranks) == ["0", "1"]  # one rank on each "node", started by srun
    assert [r["local_rank"] for r in ranks] == ["0", "0"]


def test_a_failing_rank_fails_the_step_fast_and_stops_the_other_node(tmp_path):
    proc, elapsed = _run_two_nodes("torchrun", tmp_path, FAIL_RANK="1")
    assert proc.returncode != 0
    assert "failing on purpose" in proc.stderr
    assert "--kill-on-bad-exit" in proc.stderr  # srun stopped the other node: its rank sleeps 600 s otherwise
    assert elapsed < 120, elapsed
    pid = int((tmp_path / "hung0.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the rank stuck on the surviving node was left running"


# --- recipe submit --------------------------------------------------------------------------------------


def _submit(recipe_cli, recipe: Path, workdir: Path, *args: str, env: dict[str, str] | None = None):
    return recipe_cli("submit", str(recipe), "--workdir", str(workdir), *args, env=env)


def _distributed_recipe(write, tmp_path: Path) -> Path:
    return write(
        tmp_path / "dist.yaml",
        """
        name: dist
        stages:
          - type: count
            params: {n: 3}
          - type: allreduce
            params: {steps: 2}
        """,
    )


def test_submit_dry_run_prints_a_script_that_runs_the_recipe_on_every_node(recipe_cli, write, tmp_path):
    recipe = _distributed_recipe(write, tmp_path)
    args = ("--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "2:00:00", "--account", "lab")
    proc = _submit(recipe_cli, recipe, tmp_path / "runs", *args, "--set", "stages.0.params.n=5", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    directives = [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]
    logs = tmp_path / "runs" / "dist" / "logs"
    assert directives[:7] == [
        "--job-name=recipe-dist",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--cpus-per-task=16",
        f"--output={logs}/slurm-%j.out",
        f"--chdir={Path.cwd()}",
    ]
    assert set(directives[7:]) == {"--partition=gpu", "--time=2:00:00", "--account=lab"}
    assert not logs.exists()  # a dry run writes nothing
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    run = shlex.split(script.splitlines()[-1])
    assert run[0] == "exec" and run[1:5] == [sys.executable, "-m", "recipe_runner.cli", "run"]
    assert run[5:8] == [str(recipe), "--workdir", str(tmp_path / "runs")]
    assert run[8:] == ["--set", "stages.0.params.n=5", "--set", "launch.nodes=2", "--set", "launch.processes=4"]
    # the body's command is one `recipe run` accepts, and the launch reaches the distributed stage only
    # (its world size is in its key): compared with a plain one-process run's plan
    scaled, plain = _plan_keys([*run[1:], "--dry-run"]), _plan_keys([*run[1:10], "--dry-run"])
    assert scaled["count"] == plain["count"] and scaled["allreduce"] != plain["allreduce"]


def _plan_keys(command: list[str]) -> dict[str, str]:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    rows = [line.strip("│ ").split() for line in proc.stdout.splitlines() if "│" in line]
    return {row[0]: row[-1] for row in rows if len(row) > 2}


def test_submit_validates_the_recipe_first(recipe_cli, write, tmp_path):
    recipe = _distributed_recipe(write, tmp_path)
    proc = _submit(
        recipe_cli, recipe, tmp_path, "--nodes", "2", "--gpus-per-node", "1", "--set", "stages.1.params.steps=-1"
    )
    assert proc.returncode == 2 and "steps" in proc.stderr and "problem" in proc.stderr


def test_submit_needs_sbatch_unless_dry_run(recipe_cli, write, tmp_path):
    recipe = _distributed_recipe(write, tmp_path)
    env = {"PATH": str(tmp_path / "empty")}
    proc = _submit(recipe_cli, recipe, tmp_path / "runs", "--nodes", "2", "--gpus-per-node", "1", env=env)
    assert proc.returncode == 2 and "`sbatch` is not on PATH" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_submit_through_sbatch_prints_the_job_id(recipe_cli, write, tmp_path, chain):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch.json"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'script': open(sys.argv[-1]).read()}}, open({str(record)!r}, 'w'))\n"
        "print('Submitted batch job 123')\n"
    )
    sbatch.chmod(0o755)
    recipe, workdir = _distributed_recipe(write, tmp_path), tmp_path / "runs"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    args = ("--nodes", "3", "--gpus-per-node", "2", "--cpus-per-node", "24")
    proc = _submit(recipe_cli, recipe, workdir, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "submitted Slurm job 123: 3 node(s) x 2 GPU(s)" in proc.stdout
    assert f"output: {workdir / 'dist' / 'logs' / 'slurm-123.out'}" in proc.stdout
    sent = json.loads(record.read_text())
    script_path = Path(sent["argv"][-1])
    assert script_path.parent == workdir / "dist" / "logs"  # exists: Slurm cannot write --output elsewhere
    assert sent["script"] == script_path.read_text()
    assert "#SBATCH --nodes=3\n" in sent["script"] and "#SBATCH --cpus-per-task=24\n" in sent["script"]
    assert "--set launch.nodes=3 --set launch.processes=2" in sent["script"]
    dry = _submit(recipe_cli, recipe, workdir, *args, "--dry-run", env=env)
    assert dry.stdout == sent["script"]
    # a recipe with no stage that can run distributed: submitted, with a warning
    proc = _submit(recipe_cli, chain, workdir, *args, env=env)
    assert proc.returncode == 0 and "no stage of recipe chain can run distributed" in proc.stderr


# --- recipe run inside a Slurm allocation ----------------------------------------------------------------


def test_recipe_run_starts_a_distributed_stage_on_two_nodes(recipe_cli, write, status_json, tmp_path):
    """The script `recipe submit` writes, run as Slurm runs it on the first node: its `recipe run`
    starts the distributed stage's ranks on both "nodes" through srun, and every other stage once."""
    recipe, workdir = _distributed_recipe(write, tmp_path), tmp_path / "runs"
    port = f"launch.port={_free_port()}"
    args = ("--nodes", "2", "--gpus-per-node", "1", "--set", port, "--dry-run")
    script = _submit(recipe_cli, recipe, workdir, *args).stdout
    assert "python -m recipe_runner.cli run" in script.replace(sys.executable, "python")
    srun_log = tmp_path / "srun.jsonl"
    env = _slurm_env(FAKE_SRUN_LOG=str(srun_log), SLURM_CPUS_PER_TASK="4", COLUMNS="200")
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = [json.loads(line) for line in srun_log.read_text().splitlines()]
    assert len(calls) == 1  # one srun step: the allreduce stage's
    assert calls[0]["options"] == {
        "--nodes": "2", "--ntasks": "2", "--ntasks-per-node": "1", "--kill-on-bad-exit": "1", "--cpus-per-task": "4"
    }  # fmt: skip
    sets = ["--set", port, "--set", "launch.nodes=2", "--set", "launch.processes=1"]
    stages = {s["name"]: s for s in status_json(recipe, workdir, *sets)["stages"]}
    assert stages["count"]["status"] == "done" and "world_size" not in stages["count"]["metrics"]
    assert stages["allreduce"]["metrics"]["world_size"] == 2
    assert stages["allreduce"]["metrics"]["ranks_seen"] == 3.0  # (0 + 1) + (1 + 1): a rank on each node
    assert json.loads((Path(stages["allreduce"]["artifact"]) / "numbers.json").read_text()) == [3.0, 3.0]
