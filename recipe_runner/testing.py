"""Helpers for testing stage plugins without a recipe (for third parties too).

    from recipe_runner.testing import run_stage
    result = run_stage(MyStage, {"n": 3}, inputs={"dataset": art}, workdir=tmp_path)
    result.outputs["dataset"].path, result.metrics
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .artifacts import Artifact
from .stage import Stage, StageContext


@dataclass
class StageResult:
    outputs: dict[str, Artifact]
    metrics: dict[str, Any]
    context: StageContext


def run_stage(
    stage_cls: type[Stage],
    params: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Artifact | None] | None = None,
    workdir: Path | str = ".",
    seed: int = 0,
    name: str | None = None,
) -> StageResult:
    """Validate ``params`` with the stage's model and run it once in ``workdir``.

    The checkpoint directory (``workdir/checkpoint``) is kept between calls, so a
    test can run a stage, interrupt it and run it again to exercise resuming."""
    workdir = Path(workdir)
    p = stage_cls.Params.model_validate(dict(params or {}))
    out = workdir / "output"
    ckpt = workdir / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        name=name or stage_cls.name,
        params=p,
        inputs=dict(inputs or {}),
        output_dir=out,
        checkpoint_dir=ckpt,
        seed=seed,
        log=logging.getLogger(f"recipe_runner.stage.{name or stage_cls.name}"),
        resumed=any(ckpt.iterdir()),
    )
    returned = stage_cls().run(ctx) or {}
    outputs = collect_outputs(stage_cls, p, ctx, returned)
    return StageResult(outputs=outputs, metrics=ctx.metrics, context=ctx)


def collect_outputs(stage_cls: type[Stage], params: Any, ctx: StageContext,
                    returned: Mapping[str, Artifact]) -> dict[str, Artifact]:
    """The runner's rule for a stage's outputs: what ``run`` returned, else each
    declared output at ``output_dir/<name>``; every declared output must exist."""
    outputs: dict[str, Artifact] = {}
    for out_name, kind in stage_cls.output_slots(params).items():
        art = returned.get(out_name)
        if art is None:
            art = Artifact(kind=kind, path=ctx.output_dir / out_name)
        if art.kind != kind:
            raise TypeError(f"stage {ctx.name!r} returned a {art.kind!r} for output {out_name!r}, declared {kind!r}")
        if not Path(art.path).exists():
            raise FileNotFoundError(f"stage {ctx.name!r} did not write its output {out_name!r} ({art.path})")
        art.producer = ctx.name
        outputs[out_name] = art
    return outputs
