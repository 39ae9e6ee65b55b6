"""ppo: RLHF with Proximal Policy Optimization.  The policy (the SFT model
plus a value head) samples responses to the dataset's prompts, the reward
stage's model scores them, a frozen copy of the starting model anchors a KL
penalty with an adaptive coefficient, and clipped PPO updates follow
(stages/train/posttrain_ppo.py; trl 1.x no longer ships a PPO trainer, see
docs/post-training.md).  Reports the mean reward before and after training
and the KL to the reference."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from recipe_runner.artifacts import DATASET, MODEL, PREFERENCE_DATASET, REWARD_MODEL, Artifact
from recipe_runner.stage import Input, Params, Stage, StageContext, StageError

from ..common.devices import Device, Precision, cpu_threads_field, with_cpu_threads
from ..common.models import MODEL_INPUT, MODEL_PATH_DESC, model_input_slots
from .posttrain_common import (
    DATA_PATH_DESC,
    LoraParams,
    data_input_slots,
    data_path_fingerprint,
)


class PPOParams(Params):
    """PPO settings; the defaults are the RLHF course's (trl classic PPOConfig values)."""

    model_name_or_path: str | None = Field(None, description=MODEL_PATH_DESC)
    data_path: str | None = Field(None, description=DATA_PATH_DESC)
    reward_model_name_or_path: str | None = Field(
        None, description="a hub id or local directory of a sequence-classification reward model; when set, the "
                          "stage takes no 'reward_model' input")
    steps: int = Field(20, ge=1, description="PPO iterations; each samples batch_size prompts and responses")
    learning_rate: float = Field(1.41e-5, gt=0, description="AdamW learning rate of the policy and value head")
    batch_size: int = Field(32, ge=1, description="rollouts (prompt + sampled response) per PPO iteration")
    mini_batch_size: int = Field(4, ge=1, description="rollouts per forward/backward pass in the PPO epochs")
    gradient_accumulation_steps: int = Field(1, ge=1, description="mini-batches accumulated per optimizer step")
    ppo_epochs: int = Field(4, ge=1, description="optimisation passes over each batch of rollouts")
    init_kl_coef: float = Field(0.2, ge=0, description="initial KL penalty coefficient beta")
    adap_kl_ctrl: bool = Field(True, description="adapt beta towards target_kl (Ziegler et al. 2019); false: fixed beta")
    target_kl: float = Field(0.1, gt=0, description="target KL (summed over response tokens, mean over the batch) of "
                                                    "the adaptive controller")
    horizon: float = Field(10000, gt=0, description="adaptive controller horizon: beta moves by at most "
                                                    "20% * batch_size / horizon per iteration")
    gamma: float = Field(1.0, ge=0, le=1, description="discount factor")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip range")
    cliprange_value: float = Field(0.2, gt=0, description="value prediction clip range")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    max_grad_norm: float | None = Field(1.0, description="gradient clipping (None: off)")
    whiten_rewards: bool = Field(False, description="normalise per-token rewards before GAE")
    score_clip: float | None = Field(None, description="clip reward-model scores to +-score_clip")
    early_stop_kl: float | None = Field(None, description="stop a batch's PPO epochs when the approximate KL between "
                                                          "the old and new policy exceeds 1.5x this")
    ratio_threshold: float = Field(10.0, gt=0, description="skip mini-batches whose mean probability ratio exceeds this")
    max_new_tokens: int = Field(32, ge=1, description="response length limit of the rollouts")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off, pure sampling as in trl's PPO)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_prompt_length: int = Field(128, ge=4, description="prompts are cut to their last N tokens")
    prompt_format: Literal["auto", "prompt", "alpaca", "hh", "text"] = Field(
        "auto", description="where prompts come from: a 'prompt' column, Alpaca instruction/input (standard "
                            "template), hh-rlhf texts (up to the last '\\n\\nAssistant:'), or a text column")
    prompt_column: str = Field("prompt", description="column for prompt_format prompt")
    text_column: str = Field("text", description="column for prompt_format text")
    eval_prompts: int = Field(32, ge=1, description="held-out prompts for the mean reward before and after training")
    forward_batch_size: int = Field(16, ge=1, description="rollouts per generation / scoring forward pass")
    reward_batch_size: int = Field(16, ge=1, description="texts per reward-model forward pass")
    lora: LoraParams | None = Field(None, description="train a LoRA adapter (the reference is the base with the "
                                                      "adapter disabled; merged into the output model)")
    save_steps: int = Field(5, ge=1, description="checkpoint every N iterations (resume point after a crash)")
    logging_steps: int = Field(1, ge=1, description="log every N iterations")
    precision: Precision = Field("auto", description="bf16 autocast where the GPU has it, else fp32")
    device: Device = Field("auto", description="cpu, cuda or auto")
    cpu_threads: int | None = cpu_threads_field()


class PPOStage(Stage):
    name = "ppo"
    version = "1"
    description = "RLHF with PPO: value head, clipped objective, adaptive KL penalty, reward-model scores"
    Params = PPOParams
    inputs = {
        "model": MODEL_INPUT,
        "reward_model": Input(REWARD_MODEL, description="the reward stage's model (or set reward_model_name_or_path)"),
        "dataset": Input(DATASET, PREFERENCE_DATASET, description="prompts: a prompt column, Alpaca records or "
                                                                  "hh-rlhf texts"),
    }
    outputs = {"model": MODEL}

    @classmethod
    def input_slots(cls, params: PPOParams):
        slots = data_input_slots(params, model_input_slots(params, dict(cls.inputs)))
        if params.reward_model_name_or_path:
            slots.pop("reward_model", None)
        return slots

    @classmethod
    def fingerprint_extra(cls, params):
        return data_path_fingerprint(params)

    @with_cpu_threads
    def run(self, ctx: StageContext):
        return run_ppo(ctx)


# ---------------------------------------------------------------- prompts


def _detect_prompt_format(cols: list[str], p: PPOParams) -> str:
    if p.prompt_format != "auto":
        return p.prompt_format
    if p.prompt_column in cols:
        return "prompt"
    if "instruction" in cols:
        return "alpaca"
    if "chosen" in cols:
        return "hh"
    if p.text_column in cols:
        return "text"
    raise StageError(f"input 'dataset': no prompts found in columns {cols}; expected {p.prompt_column!r}, "
                     f"'instruction' (Alpaca), 'chosen' (hh-rlhf) or {p.text_column!r}; or set prompt_format")


def prompts_of(ds: Any, p: PPOParams) -> tuple[list[str], str]:
    from ..common.prompts import alpaca_prompts_batch
    from .posttrain_common import split_hh

    cols = ds.column_names
    fmt = _detect_prompt_format(cols, p)
    need = {"prompt": [p.prompt_column], "alpaca": ["instruction"], "hh": ["chosen"], "text": [p.text_column]}[fmt]
    missing = [c for c in need if c not in cols]
    if missing:
        raise StageError(f"input 'dataset': prompt_format {fmt!r} needs column(s) {missing}; found {cols}")
    if fmt == "prompt":
        prompts = [str(x) for x in ds[p.prompt_column]]
    elif fmt == "alpaca":
        b = {"instruction": ds["instruction"]}
        if "input" in cols:
            b["input"] = ds["input"]
        prompts = alpaca_prompts_batch(b)
    elif fmt == "hh":
        prompts = [sp[0] for sp in map(split_hh, ds["chosen"]) if sp is not None]
    else:
        prompts = [str(x) for x in ds[p.text_column]]
    prompts = [x for x in prompts if x.strip()]
    if not prompts:
        raise StageError("input 'dataset': no non-empty prompts")
    return prompts, fmt


# ---------------------------------------------------------------- run


def run_ppo(ctx: StageContext) -> dict[str, Artifact]:
    import json
    import os
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..common.devices import resolve_device, resolve_precision, torch_dtype
    from ..common.models import load_tokenizer, max_positions, resolve_model_path, save_model_artifact
    from .posttrain_common import load_stage_dataset, score_texts
    from .posttrain_ppo import PolicyWithValueHead, PPOEngine, PPOSettings, mean_reward

    p: PPOParams = ctx.params  # type: ignore[assignment]
    if p.batch_size % p.mini_batch_size:
        raise StageError(f"batch_size ({p.batch_size}) must be a multiple of mini_batch_size ({p.mini_batch_size})")
    device = resolve_device(p.device)
    precision = resolve_precision(p.precision, device)
    autocast = torch_dtype(precision) if precision in ("bf16", "fp16") else None
    base = resolve_model_path(ctx)
    rm_path = p.reward_model_name_or_path or str(ctx.input("reward_model").path)

    # prompts: train + a fixed held-out set for the before/after reward
    dsd = load_stage_dataset(ctx)
    train_prompts, fmt = prompts_of(dsd["train"], p)
    if "validation" in dsd:
        eval_prompts = prompts_of(dsd["validation"], p)[0][: p.eval_prompts]
    else:
        rng = random.Random(ctx.seed)
        order = list(range(len(train_prompts)))
        rng.shuffle(order)
        n_eval = min(p.eval_prompts, max(1, len(order) // 5))
        eval_prompts = [train_prompts[i] for i in order[:n_eval]]
        train_prompts = [train_prompts[i] for i in order[n_eval:]] or eval_prompts
    ctx.metrics.update(prompt_format=fmt, train_prompts=len(train_prompts), eval_prompts=len(eval_prompts))

    tok = load_tokenizer(base)
    torch.manual_seed(ctx.seed)
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    max_pos = max_positions(lm)
    max_prompt = p.max_prompt_length
    if max_pos and max_prompt + p.max_new_tokens > max_pos:
        max_prompt = max_pos - p.max_new_tokens
        if max_prompt < 4:
            raise StageError(f"max_new_tokens={p.max_new_tokens} leaves no room for a prompt in the model's "
                             f"context of {max_pos} tokens")
        ctx.log.warning("prompts cut to %d tokens to fit the model's context (%d)", max_prompt, max_pos)

    def encode(texts: list[str]) -> list[list[int]]:
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return [x[-max_prompt:] for x in ids if x]

    train_q, eval_q = encode(train_prompts), encode(eval_prompts)
    ref = None
    if p.lora is not None:
        from peft import get_peft_model

        lm = get_peft_model(lm, p.lora.to_peft())
    else:
        ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    policy = PolicyWithValueHead(lm)

    rm_tok = load_tokenizer(rm_path)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_path, dtype=torch.float32).to(device)
    if rm.config.num_labels != 1:
        raise StageError(f"reward model {rm_path}: expected one output (num_labels=1), got {rm.config.num_labels}")
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = rm_tok.pad_token_id
    rm.eval().requires_grad_(False)

    def reward_fn(queries, responses) -> list[float]:
        texts = [tok.decode(list(q) + list(r), skip_special_tokens=True) for q, r in zip(queries, responses)]
        return score_texts(rm, rm_tok, texts, batch_size=p.reward_batch_size)

    cfg = PPOSettings(
        learning_rate=p.learning_rate, batch_size=p.batch_size, mini_batch_size=p.mini_batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps, ppo_epochs=p.ppo_epochs,
        init_kl_coef=p.init_kl_coef, adap_kl_ctrl=p.adap_kl_ctrl, target_kl=p.target_kl, horizon=p.horizon,
        gamma=p.gamma, lam=p.lam, cliprange=p.cliprange, cliprange_value=p.cliprange_value, vf_coef=p.vf_coef,
        max_grad_norm=p.max_grad_norm, whiten_rewards=p.whiten_rewards, ratio_threshold=p.ratio_threshold,
        score_clip=p.score_clip, early_stop_kl=p.early_stop_kl, max_new_tokens=p.max_new_tokens,
        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, forward_batch_size=p.forward_batch_size)
    engine = PPOEngine(policy, ref, tok, cfg, autocast_dtype=autocast)

    # resume
    ckpt = ctx.checkpoint_dir / "ppo_state.pt"
    start, history, before = 0, [], None
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        engine.load_state_dict(state["engine"])
        start, history, before = state["step"], state["history"], state.get("reward_before")
        ctx.metrics["resumed_from_step"] = start
        ctx.log.info("resuming PPO from checkpoint %s (step %d)", ckpt, start)
    eval_seed = ctx.seed + 10_000
    if before is None:
        before = mean_reward(engine, eval_q, reward_fn, eval_seed)
        ctx.log.info("mean reward on %d held-out prompts before PPO: %.4f", len(eval_q), before)

    def save(step: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"engine": engine.state_dict(), "step": step, "history": history, "reward_before": before}, tmp)
        os.replace(tmp, ckpt)

    order_rng = random.Random(ctx.seed)
    epoch_order: list[int] = []
    # replay the prompt order up to ``start`` so a resumed run sees the same batches
    def batch_for(step: int) -> list[list[int]]:
        nonlocal epoch_order
        out = []
        while len(epoch_order) < (step + 1) * p.batch_size:
            perm = list(range(len(train_q)))
            order_rng.shuffle(perm)
            epoch_order.extend(perm)
        for i in epoch_order[step * p.batch_size:(step + 1) * p.batch_size]:
            out.append(train_q[i])
        return out

    with ctx.progress("ppo", total=p.steps) as bar:
        bar.update(start)
        for step in range(start, p.steps):
            queries = batch_for(step)
            responses = engine.generate(queries, generator_seed=ctx.seed + step)
            scores = reward_fn(queries, responses)
            stats = engine.step(queries, responses, scores, shuffle_seed=ctx.seed + step)
            stats["step"] = step + 1
            history.append(stats)
            if (step + 1) % p.logging_steps == 0 or step == start:
                ctx.log.info("ppo step %d: reward %.4f, kl %.4f, kl_coef %.4f, pg_loss %.4f, vf_loss %.4f, "
                             "clipfrac %.3f, response length %.1f", step + 1, stats["score_mean"], stats["kl"],
                             stats["kl_coef"], stats.get("pg_loss", 0.0), stats.get("vf_loss", 0.0),
                             stats.get("pg_clipfrac", 0.0), stats["response_length"])
            if (step + 1) % p.save_steps == 0 and step + 1 < p.steps:
                save(step + 1)
            bar.update(step + 1)

    after = mean_reward(engine, eval_q, reward_fn, eval_seed)
    ctx.log.info("mean reward on held-out prompts: %.4f before, %.4f after PPO", before, after)
    last = history[-1] if history else {}
    ctx.metrics.update(
        reward_before=before, reward_after=after, reward_gain=after - before,
        kl=last.get("kl"), kl_coef=last.get("kl_coef_next"), steps=p.steps,
        train_reward_first=history[0]["score_mean"] if history else None,
        train_reward_last=last.get("score_mean"),
    )
    samples = engine.generate(eval_q[:3], generator_seed=eval_seed)
    ctx.metrics["samples"] = [{"prompt": tok.decode(q, skip_special_tokens=True)[-200:],
                               "response": tok.decode(r, skip_special_tokens=True)[:300]}
                              for q, r in zip(eval_q[:3], samples)]

    model = policy.lm
    if p.lora is not None:
        model = model.merge_and_unload()
    out = ctx.output_path("model")
    art = save_model_artifact(model, tok, out, base_model=base, method="ppo", reward_model=rm_path)
    with (out / "ppo_history.jsonl").open("w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    _plot(history, out / "reward.png")
    save(p.steps)
    return {"model": art}


def _plot(history: list[dict], png) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h["score_mean"] for h in history])
    ax[0].set_title("mean reward")
    ax[1].plot(steps, [h["kl"] for h in history])
    ax[1].set_title("KL to reference")
    for a in ax:
        a.set_xlabel("PPO step")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
