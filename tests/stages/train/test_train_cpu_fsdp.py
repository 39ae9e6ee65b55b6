"""FSDP on CPU: the checkpoint layouts accelerate's FSDP writes count as
complete resume points; what cannot run on CPU (ZeRO, FSDP's CPU offload, FSDP
in one process) is refused with the reason.  The FSDP training itself (pretrain,
sft, reward, dpo) runs in tests/engine/test_launch_training.py (2 processes
through `recipe run`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recipe_runner import StageError
from recipe_runner.launch import LaunchSpec
from recipe_runner.stage import StageContext
from recipe_runner_stages.train.checkpoints import checkpoint_is_complete, last_checkpoint
from recipe_runner_stages.train.trainer_args import TrainingParams, _distributed_kwargs, training_arguments_kwargs

MakeContext = Callable[..., StageContext[Any]]

#: what the Trainer writes into checkpoint-N under FSDP2 (FULL_STATE_DICT, as on this CPU with 2 ranks)
FSDP_FULL = ("model.safetensors", "pytorch_model_fsdp.bin", "optimizer.bin", "scheduler.pt", "rng_state_0.pth")
#: ... and under SHARDED_STATE_DICT: torch.distributed.checkpoint directories, one file per rank, .metadata last
FSDP_SHARDED = (
    "pytorch_model_fsdp_0/__0_0.distcp",
    "pytorch_model_fsdp_0/__1_0.distcp",
    "pytorch_model_fsdp_0/.metadata",
    "optimizer_0/__0_0.distcp",
    "optimizer_0/__1_0.distcp",
    "optimizer_0/.metadata",
    "scheduler.pt",
)


def _checkpoint(root: Path, step: int, files: tuple[str, ...]) -> Path:
    path = root / f"checkpoint-{step}"
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"x")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


FSDP_LAUNCH = LaunchSpec.model_validate({"processes": 2, "strategy": "fsdp"})


def _fsdp_context(make_context: MakeContext) -> StageContext[Any]:
    ctx = make_context(TrainingParams())
    ctx.launch = FSDP_LAUNCH
    return ctx


@pytest.mark.parametrize("files", [FSDP_FULL, FSDP_SHARDED], ids=["full-state-dict", "sharded-state-dict"])
def test_fsdp_checkpoints_are_complete_resume_points(tmp_path: Path, make_context: MakeContext, files) -> None:
    ctx = _fsdp_context(make_context)
    _checkpoint(tmp_path / "ckpt", 3, files)
    assert checkpoint_is_complete(tmp_path / "ckpt" / "checkpoint-3")
    assert last_checkpoint(ctx) == str(tmp_path / "ckpt" / "checkpoint-3")


@pytest.mark.parametrize("missing", ["optimizer_0/.metadata", "pytorch_model_fsdp_0/.metadata"])
def test_a_sharded_checkpoint_without_its_metadata_is_set_aside(
    tmp_path: Path, make_context: MakeContext, missing: str
) -> None:
    """torch.distributed.checkpoint writes .metadata after every rank's shard: without it the save was cut short."""
    ctx = _fsdp_context(make_context)
    _checkpoint(tmp_path / "ckpt", 3, FSDP_SHARDED)
    last = _checkpoint(tmp_path / "ckpt", 6, FSDP_SHARDED)
    (last / missing).unlink()
    assert not checkpoint_is_complete(last)
    assert last_checkpoint(ctx) == str(tmp_path / "ckpt" / "checkpoint-3")
    assert (tmp_path / "ckpt" / "incomplete" / "checkpoint-6").is_dir()


@pytest.mark.parametrize(
    ("files", "launch", "written", "current"),
    [
        (FSDP_FULL, None, "fsdp", "ddp"),
        (FSDP_SHARDED, {"processes": 2}, "fsdp", "ddp"),
        (("model.safetensors", "optimizer.pt"), {"processes": 2, "strategy": "fsdp"}, "ddp", "fsdp"),
        (("model.safetensors", "latest"), {"processes": 2, "strategy": "fsdp"}, "deepspeed", "fsdp"),
    ],
)
def test_checkpoints_of_another_strategy_are_not_resumed_silently(
    tmp_path: Path, make_context: MakeContext, files, launch, written: str, current: str
) -> None:
    """The strategy is not in the stage's key: a re-run with another one finds the first one's checkpoints,
    which its Trainer cannot load (transformers: "only supported when using PyTorch FSDP")."""
    ctx = make_context(TrainingParams(), name="pretrain")
    ctx.launch = LaunchSpec.model_validate(launch) if launch else None
    _checkpoint(tmp_path / "ckpt", 3, files)
    expected = f"written under strategy {written}, this run trains with {current}, which cannot load it"
    with pytest.raises(StageError, match=expected + ".*recipe run --force pretrain"):
        last_checkpoint(ctx)


def test_deepspeed_on_cpu_is_refused_not_silently_ddp() -> None:
    with pytest.raises(StageError, match="strategy deepspeed needs GPUs: on CPU the Trainer"):
        _distributed_kwargs(
            TrainingParams(), LaunchSpec.model_validate({"processes": 2, "strategy": "deepspeed"}), "cpu"
        )


@pytest.fixture()
def fresh_accelerate_state() -> Iterator[None]:
    """accelerate's process-wide state as the next TrainingArguments finds it anyway (reset)."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(
    ("launch", "reason"),
    [
        (
            {"processes": 2, "strategy": "fsdp", "preset": "fsdp_offload"},
            "fsdp_offload.* needs GPUs: torch's CPUOffloadPolicy pins",
        ),
        ({"processes": 1, "strategy": "fsdp"}, "FSDP on CPU needs at least 2 processes"),
        ({"processes": 2, "strategy": "fsdp", "config": {"version": 1}}, "FSDP on CPU runs FSDP2 only"),
        (
            {"processes": 2, "strategy": "fsdp", "config": {"state_dict_type": "SHARDED_STATE_DICT"}},
            "SHARDED_STATE_DICT: the Trainer's save_model then writes no weights",
        ),
    ],
    ids=["offload", "one-process", "fsdp1", "sharded-save"],
)
def test_what_fsdp_cannot_do_on_cpu_is_refused_with_the_reason(
    make_context: MakeContext, fresh_accelerate_state: None, launch: dict[str, Any], reason: str
) -> None:
    """Here, in one process without torchrun, accelerate's state is not distributed: the one-process case.
    The refusals hold for every Trainer-backed stage (their common TrainingParams)."""
    ctx = make_context(TrainingParams(device="cpu"))
    ctx.launch = LaunchSpec.model_validate(launch)
    with pytest.raises(StageError, match=reason):
        training_arguments_kwargs(ctx.params, ctx, has_eval=False)
    assert "strategy" not in ctx.metrics
