"""One rank of a distributed stage: ``python -m recipe_runner.rank_worker JOB``,
started by torchrun / accelerate (through srun across nodes) from the
orchestrating ``recipe run``.  It loads the recipe as the orchestrator did,
runs the one stage named in the job with the same checkpoint directory as
every other rank, and, on rank 0, writes what the stage returned for the
orchestrator to commit.  A rank that fails writes its error for the
orchestrator to report; library output of every rank goes to its own log."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .artifacts import Artifact
from .capture import library_output_to
from .rank_events import EventLogHandler, EventProgressSink, EventTracker, EventWriter
from .recipe import load_recipe
from .stage import Lineage, StageContext, StageError, StageRef, UpstreamRecord

RESULT = "result.json"
ERRORS = "errors"


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK") or "0"), int(os.environ.get("WORLD_SIZE") or "1")


def lineage_from_json(data: dict[str, Any]) -> Lineage:
    return Lineage(
        recipe=data["recipe"],
        recipe_file=data["recipe_file"],
        seed=int(data["seed"]),
        stage=StageRef(**data["stage"]),
        upstream=tuple(UpstreamRecord(**u) for u in data.get("upstream", [])),
        versions=data.get("versions", {}),
    )


def run(job: dict[str, Any]) -> None:
    from .runner import collect_outputs  # the same checks as an in-process stage

    rank, world = rank_and_world()
    if world != job["world_size"]:
        raise StageError(f"the launcher started {world} process(es), the launch block asks for {job['world_size']}")
    tmp, logs = Path(job["tmp"]), Path(job["logs"])
    recipe = load_recipe(job["recipe_file"], job["overrides"], trust_code=job["trust_code"])
    s = recipe.stage(job["stage"])
    log = logging.getLogger(f"recipe_runner.stage.{s.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    writer = EventWriter(tmp / "events.jsonl") if rank == 0 else None
    handler: logging.Handler = (
        EventLogHandler(writer) if writer else logging.FileHandler(logs / f"{s.name}.rank{rank}.log")
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)  # as in-process: the stage log file gets every record, the console INFO and up
    log.addHandler(handler)
    ctx: StageContext[Any] = StageContext(
        name=s.name,
        params=s.params,
        inputs={k: None if v is None else Artifact.from_json(v) for k, v in job["inputs"].items()},
        output_dir=tmp / "outputs" if rank == 0 else tmp / f"rank{rank}" / "outputs",
        checkpoint_dir=Path(job["checkpoint"]),
        seed=recipe.seed,
        log=log,
        resumed=bool(job["resumed"]),
        recipe_name=recipe.name,
        lineage=lineage_from_json(job["lineage"]),
        progress_sink=EventProgressSink(writer) if writer else None,
        launch=s.launch,
    )
    if writer and job.get("tracking"):
        ctx.tracker = EventTracker(writer)
    if rank == 0 and world > 1:
        log.info("rank 0 of %d (%s, %s)", world, s.launch.launcher if s.launch else "torchrun", _strategy(ctx))
    returned = s.stage_cls().run(ctx) or {}
    if rank == 0:
        ctx.metrics["world_size"] = world
        outputs = collect_outputs(s.stage_cls, s.params, ctx, returned)
        result = {"outputs": {k: a.to_json() for k, a in outputs.items()}, "metrics": ctx.metrics}
        part = tmp / (RESULT + ".part")
        part.write_text(json.dumps(result, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
        part.replace(tmp / RESULT)


def _strategy(ctx: StageContext[Any]) -> str:
    spec = ctx.launch
    if spec is None:
        return "ddp"
    return spec.strategy + (f" {spec.preset}" if spec.preset else "")


def write_error(tmp: Path, rank: int, e: BaseException) -> None:
    errors = tmp / ERRORS
    errors.mkdir(parents=True, exist_ok=True)
    message = str(e) if isinstance(e, StageError) else f"{type(e).__name__}: {e}"
    record = {"rank": rank, "time": time.time(), "message": message, "traceback": traceback.format_exc()[-4000:]}
    (errors / f"rank{rank}.json").write_text(json.dumps(record))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    rank, _ = rank_and_world()
    tmp, logs = Path(job["tmp"]), Path(job["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    with library_output_to(logs / f"{job['stage']}.rank{rank}.log"):
        try:
            run(job)
        except BaseException as e:
            write_error(tmp, rank, e)
            traceback.print_exc()
            return 130 if isinstance(e, KeyboardInterrupt) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
