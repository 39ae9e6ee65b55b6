"""ppo: RLHF with Proximal Policy Optimization.  The policy (the SFT model
plus a value head) samples responses to the dataset's prompts, the reward
stage's model scores them, a frozen copy of the starting model anchors a KL
penalty with an adaptive coefficient, and clipped PPO updates follow
(stages/train/ppo/engine.py; trl 1.x no longer ships a PPO trainer, see
docs/post-training.md).  Reports the mean reward before and after training
and the KL to the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe_runner import DATASET, MODEL, PREFERENCE_DATASET, REWARD_MODEL, Artifact, Input, StageContext, StageError

from ...common.devices import with_cpu_threads
from ...common.models import MODEL_INPUT, local_path
from ..fine_tuning import FineTuningStage
from .params import PPOParams

if TYPE_CHECKING:
    from .checkpoint import PPOCheckpoint, PPOProgress
    from .engine import PPOEngine
    from .rollouts import RewardModelScorer

#: the held-out reward is measured with this offset from the recipe's seed
EVAL_SEED_OFFSET = 10_000


class PPOStage(FineTuningStage[PPOParams]):
    name = "ppo"
    distributed = (
        "its PPO loop (stages/train/ppo/engine.py) samples, scores and updates in one process; it has no "
        "data-parallel path yet (run the sft and reward stages distributed, then ppo once)"
    )
    version = "1"
    description = "RLHF with PPO: value head, clipped objective, adaptive KL penalty, reward-model scores"
    Params = PPOParams
    inputs = {
        "model": MODEL_INPUT,
        "reward_model": Input(REWARD_MODEL, description="the reward stage's model (or set reward_model_name_or_path)"),
        "dataset": Input(
            DATASET, PREFERENCE_DATASET, description="prompts: a prompt column, Alpaca records or hh-rlhf texts"
        ),
    }
    outputs = {"model": MODEL}

    @classmethod
    def local_inputs(cls, params: PPOParams) -> Mapping[str, Path]:
        """Those of every fine-tuning stage, and a local reward model directory."""
        out = dict(super().local_inputs(params))
        reward_model = local_path(params.reward_model_name_or_path)
        if reward_model is not None:
            out["reward_model_name_or_path"] = reward_model
        return out

    @classmethod
    def input_slots(cls, params: PPOParams) -> Mapping[str, Input]:
        slots = super().input_slots(params)
        if params.reward_model_name_or_path:
            return {slot: spec for slot, spec in slots.items() if slot != "reward_model"}
        return slots

    @with_cpu_threads
    def run(self, ctx: StageContext[PPOParams]) -> dict[str, Artifact]:
        from ...common.models import resolve_model_path
        from ..training_examples import load_examples
        from .prompts import train_and_held_out_prompts

        p = ctx.params
        if p.batch_size % p.mini_batch_size:
            raise StageError(f"batch_size ({p.batch_size}) must be a multiple of mini_batch_size ({p.mini_batch_size})")
        base = resolve_model_path(ctx)
        rm_path = p.reward_model_name_or_path or str(ctx.input("reward_model").path)
        train_prompts, eval_prompts = train_and_held_out_prompts(ctx, load_examples(p.data_path, ctx.inputs))
        run = _build_run(ctx, base, rm_path, train_prompts, eval_prompts)
        reward_before = _train(ctx, run)
        return {"model": _finish(ctx, run, reward_before, base, rm_path)}


@dataclass
class _PPORun:
    """Everything a PPO run works with."""

    engine: PPOEngine
    tokenizer: Any
    reward_fn: RewardModelScorer
    train_queries: list[list[int]]
    eval_queries: list[list[int]]
    checkpoint: PPOCheckpoint
    progress: PPOProgress


def _build_run(
    ctx: StageContext[PPOParams], base: str, rm_path: str, train_prompts: list[str], eval_prompts: list[str]
) -> _PPORun:
    """Policy (+ value head), reference, reward model and engine, the prompts
    as token ids, and the progress restored from a checkpoint."""
    import torch

    from ...common.devices import resolve_device, resolve_precision, torch_dtype
    from ...common.models import load_causal_lm, load_tokenizer, max_positions
    from ..reward.scoring import load_reward_scorer
    from .checkpoint import PPOCheckpoint, PPOProgress
    from .engine import PPOEngine
    from .prompts import encode_prompts, prompt_token_budget
    from .rollouts import RewardModelScorer

    p = ctx.params
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device)
    tok = load_tokenizer(base)
    torch.manual_seed(ctx.seed)
    lm = load_causal_lm(base, precision="fp32", device=device)
    max_prompt = prompt_token_budget(ctx, max_positions(lm))
    train_q, eval_q = encode_prompts(tok, train_prompts, max_prompt), encode_prompts(tok, eval_prompts, max_prompt)
    policy, ref = _policy_and_reference(p, base, lm, device)
    rm_tok = load_tokenizer(rm_path)
    reward_fn = RewardModelScorer(tok, load_reward_scorer(rm_path, rm_tok, device), rm_tok, p.reward_batch_size)
    autocast = torch_dtype(precision) if precision in ("bf16", "fp16") else None
    engine = PPOEngine(policy, ref, tok, p, autocast_dtype=autocast)
    checkpoint = PPOCheckpoint(ctx.checkpoint_dir)
    progress = checkpoint.load(engine)
    if progress is not None:
        ctx.metrics["resumed_from_step"] = progress.step
        ctx.log.info("resuming PPO from checkpoint %s (step %d)", checkpoint.path, progress.step)
    return _PPORun(engine, tok, reward_fn, train_q, eval_q, checkpoint, progress or PPOProgress())


def _policy_and_reference(p: PPOParams, base: str, lm: Any, device: str) -> tuple[Any, Any]:
    """(policy with value head, frozen reference or None): with LoRA the
    reference is the base with the adapter disabled, else a second copy."""
    from ...common.models import load_causal_lm
    from .value_head import PolicyWithValueHead

    ref = None
    if p.lora is not None:
        from peft import get_peft_model

        lm = get_peft_model(lm, p.lora.to_peft())
    else:
        ref = load_causal_lm(base, precision="fp32", device=device)
    return PolicyWithValueHead(lm), ref


def _train(ctx: StageContext[PPOParams], run: _PPORun) -> float:
    """The PPO iterations from where the run stands to ``steps``, the
    held-out reward measured first (unless the checkpoint has it), a
    checkpoint every ``save_steps``.  Returns the held-out reward before PPO."""
    from ..trainer_progress import resend_checkpointed_points, stop_at_non_finite, stop_at_non_finite_weights
    from .engine import mean_reward
    from .report import log_iteration
    from .rollouts import PromptOrder

    p, engine, progress = ctx.params, run.engine, run.progress
    before = progress.reward_before
    if before is None:
        before = progress.reward_before = mean_reward(
            engine, run.eval_queries, run.reward_fn, ctx.seed + EVAL_SEED_OFFSET
        )
        ctx.log.info("mean reward on %d held-out prompts before PPO: %.4f", len(run.eval_queries), before)
    order = PromptOrder(run.train_queries, p.batch_size, ctx.seed)
    start = progress.step
    if start:  # resumed: the checkpoint's points again, for a tracker that lost them in the kill
        resend_checkpointed_points(ctx, progress.history)
    with ctx.progress("ppo", total=p.steps) as bar:
        bar.update(start)
        for step in range(start, p.steps):
            queries = order.batch(step)
            responses = engine.generate(queries, generator_seed=ctx.seed + step)
            stats = engine.step(queries, responses, run.reward_fn(queries, responses), shuffle_seed=ctx.seed + step)
            ctx.track(step + 1, dict(stats))
            stop_at_non_finite(ctx.name, step + 1, stats)
            stats["step"] = step + 1
            progress.history.append(stats)
            if (step + 1) % p.logging_steps == 0 or step == start:
                log_iteration(ctx.log, stats)
            if (step + 1) % p.save_steps == 0 and step + 1 < p.steps:
                stop_at_non_finite_weights(ctx.name, step + 1, engine.trainable)
                run.checkpoint.save(engine, progress, step + 1)
            bar.update(step + 1)
    return before


def _finish(ctx: StageContext[PPOParams], run: _PPORun, before: float, base: str, rm_path: str) -> Artifact:
    """The held-out reward after training, the summary metrics and samples,
    the policy saved as a model (LoRA merged, no value head) with its
    history, and a final checkpoint."""
    from ...common.models import save_model_artifact
    from ..trainer_progress import stop_at_non_finite_weights
    from .engine import mean_reward
    from .report import sample_metrics, summary_metrics, write_history

    p, engine, progress = ctx.params, run.engine, run.progress
    stop_at_non_finite_weights(ctx.name, p.steps, engine.trainable)
    eval_seed = ctx.seed + EVAL_SEED_OFFSET
    after = mean_reward(engine, run.eval_queries, run.reward_fn, eval_seed)
    ctx.log.info("mean reward on held-out prompts: %.4f before, %.4f after PPO", before, after)
    ctx.metrics.update(summary_metrics(progress.history, before, after, p.steps))
    samples = engine.generate(run.eval_queries[:3], generator_seed=eval_seed)
    ctx.metrics["samples"] = sample_metrics(run.tokenizer, run.eval_queries[:3], samples)

    model = engine.policy.lm
    if p.lora is not None:
        model = model.merge_and_unload()
    out = ctx.output_path("model")
    art = save_model_artifact(model, run.tokenizer, out, base_model=base, method="ppo", reward_model=rm_path)
    write_history(progress.history, out)
    run.checkpoint.save(engine, progress, p.steps)
    return art
