"""Small, fast stages that exercise the engine: a resumable counter that
checkpoints every step, a transform, and a reducer.  They use a custom
artifact kind ("numbers": a JSON list in numbers.json)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import Field

from recipe_runner import Artifact, Input, Params, PlanView, Stage, StageContext, StageError, run_setting

NUMBERS = "numbers"
REPORT = "report"


class CountParams(Params):
    n: int = Field(5, ge=0, description="how many numbers")
    start: int = Field(0, description="first number")
    sleep: float = run_setting(0.0, ge=0, description="seconds per step (changes how long, not what)")
    from_file: str | None = Field(None, description="a JSON list of numbers to add to each counted number")
    fail_at: int | None = Field(None, description="raise at this step (tests failures)")
    hook: str | None = Field(None, description="a Python file run before counting (tests --trust-code)")


class Count(Stage):
    """Counts start..start+n-1, one checkpoint per step (resumable)."""

    name = "count"
    version = "1"
    Params = CountParams
    outputs = {"numbers": NUMBERS}

    @classmethod
    def output_facts(cls, params, inputs):
        return {"numbers": {"length": params.n}}

    @classmethod
    def local_inputs(cls, params):
        return {"from_file": Path(params.from_file)} if params.from_file else {}

    @classmethod
    def runs_code(cls, params):
        return {"hook": f"runs the Python file {params.hook}"} if params.hook else {}

    def run(self, ctx: StageContext):
        p: CountParams = ctx.params
        if p.hook:
            import runpy

            runpy.run_path(p.hook)
        state_file = ctx.checkpoint_dir / "state.json"
        done: list[int] = json.loads(state_file.read_text()) if state_file.exists() else []
        if done:
            ctx.log.info("resuming at step %d", len(done))
            ctx.metrics["resumed_from_step"] = len(done)
        with ctx.progress("counting", total=p.n) as bar:
            bar.update(len(done))
            for i in range(len(done), p.n):
                if p.fail_at is not None and i == p.fail_at:
                    raise StageError(f"planned failure at step {i}")
                time.sleep(p.sleep)
                done.append(p.start + i + (sum(json.loads(Path(p.from_file).read_text())) if p.from_file else 0))
                ctx.track(i, {"value": done[-1]})  # before the step is committed: a kill re-logs it, never loses it
                tmp = state_file.with_suffix(f".{os.getpid()}.tmp")  # ranks of a multi-process launch share it
                tmp.write_text(json.dumps(done))
                os.replace(tmp, state_file)
                (ctx.checkpoint_dir / "progress.log").open("a").write(f"{os.getpid()} {i}\n")
                bar.advance()
        out = ctx.output_path("numbers")
        (out / "numbers.json").write_text(json.dumps(done))
        ctx.metrics["count"] = len(done)
        return {"numbers": Artifact(NUMBERS, out, {"length": len(done)})}


class MultiplyParams(Params):
    factor: float = Field(2.0, description="multiply every number by this")


class Multiply(Stage):
    """Multiplies numbers by a factor."""

    name = "multiply"
    Params = MultiplyParams
    inputs = {"numbers": Input(NUMBERS)}
    outputs = {"numbers": NUMBERS}

    @classmethod
    def output_facts(cls, params, inputs):
        return {"numbers": inputs.get("numbers", {})}  # as many numbers as it was given

    def run(self, ctx: StageContext):
        nums = json.loads((ctx.input("numbers").path / "numbers.json").read_text())
        out = ctx.output_path("numbers")
        (out / "numbers.json").write_text(json.dumps([x * ctx.params.factor for x in nums]))
        ctx.metrics["length"] = len(nums)


class TotalParams(Params):
    max_length: int | None = Field(None, description="fail validation if more numbers come in")
    label: str = Field("", description="written into the report")


class Total(Stage):
    """Sums numbers into a report."""

    name = "total"
    Params = TotalParams
    inputs = {"numbers": Input(NUMBERS), "extra": Input(NUMBERS, optional=True, auto=False)}
    outputs = {"report": REPORT}

    @classmethod
    def cross_check(cls, view: PlanView) -> list[str]:
        up = view.upstream.get("numbers")
        length = up.facts.get("length") if up else None
        if length is not None and view.params.max_length is not None and length > view.params.max_length:
            return [f"upstream '{up.stage}' counts {length} numbers, more than max_length {view.params.max_length}"]
        return []

    def run(self, ctx: StageContext):
        nums = json.loads((ctx.input("numbers").path / "numbers.json").read_text())
        extra = ctx.inputs.get("extra")
        if extra is not None:
            nums += json.loads((extra.path / "numbers.json").read_text())
        out = ctx.output_path("report")
        (out / "report.json").write_text(json.dumps({"sum": sum(nums), "label": ctx.params.label}))
        ctx.metrics["sum"] = sum(nums)
        ctx.metrics["upstream"] = [u.name for u in ctx.lineage.upstream] if ctx.lineage else []
