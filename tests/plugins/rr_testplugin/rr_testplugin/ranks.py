"""A distributed test stage: every rank joins a torch.distributed (gloo) group,
all-reduces its rank + 1 once per step (so the sum proves every rank took
part), and rank 0 checkpoints each step, so a killed launch resumes."""

from __future__ import annotations

import json
import os
import time

from pydantic import Field

from recipe_runner import Artifact, Params, Stage, StageContext, StageError, run_setting

NUMBERS = "numbers"


class AllReduceParams(Params):
    steps: int = Field(3, ge=0, description="how many all-reduces")
    sleep: float = run_setting(0.0, ge=0, description="seconds per step")
    fail_rank: int | None = Field(None, description="this rank raises at step fail_at (tests failures)")
    fail_at: int = Field(0, description="the step fail_rank raises at")


class AllReduce(Stage[AllReduceParams]):
    """Sums rank + 1 over the ranks at each step; outputs the sums and the world size."""

    name = "allreduce"
    Params = AllReduceParams
    outputs = {"numbers": NUMBERS}
    distributed = True

    def run(self, ctx: StageContext[AllReduceParams]) -> dict[str, Artifact]:
        import torch
        import torch.distributed as dist

        p = ctx.params
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        if world > 1:
            dist.init_process_group("gloo")
        state = ctx.checkpoint_dir / "state.json"
        sums: list[float] = json.loads(state.read_text()) if state.exists() else []
        if sums:
            ctx.log.info("resuming at step %d", len(sums))
        try:
            with ctx.progress("all-reducing", total=p.steps) as bar:
                bar.update(len(sums))
                for step in range(len(sums), p.steps):
                    if p.fail_rank == rank and step == p.fail_at:
                        raise StageError(f"planned failure of rank {rank} at step {step}")
                    time.sleep(p.sleep)
                    t = torch.tensor([float(rank + 1)])
                    if world > 1:
                        dist.all_reduce(t)
                    sums.append(float(t.item()))
                    if rank == 0:
                        tmp = state.with_suffix(".tmp")
                        tmp.write_text(json.dumps(sums))
                        os.replace(tmp, state)
                        (ctx.checkpoint_dir / "progress.log").open("a").write(f"{os.getpid()} {step}\n")
                    bar.advance()
                    ctx.track(step, {"sum": sums[-1]})
        finally:
            if world > 1:
                dist.destroy_process_group()
        ctx.log.info("rank %d of %d done", rank, world)
        out = ctx.output_path("numbers")
        (out / "numbers.json").write_text(json.dumps(sums))
        ctx.metrics["ranks_seen"] = sums[-1] if sums else None
        return {"numbers": Artifact(NUMBERS, out, {"length": len(sums), "world_size": world})}
