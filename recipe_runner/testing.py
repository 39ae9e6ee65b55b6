"""Helpers for testing stage plugins without a recipe (for third parties too).

from recipe_runner.testing import run_stage
result = run_stage(MyStage, {"n": 3}, inputs={"dataset": art}, workdir=tmp_path)
result.outputs["dataset"].path, result.metrics
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import Artifact
from .runner import collect_outputs
from .stage import Stage, StageContext


@dataclass
class StageResult:
    outputs: dict[str, Artifact]
    metrics: dict[str, Any]
    context: StageContext[Any]


def run_stage(
    stage_cls: type[Stage[Any]],
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
