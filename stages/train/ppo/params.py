"""The ppo stage's parameters: the starting model, the reward model and the
prompts, the PPO algorithm's settings (which :class:`~.engine.PPOEngine`
reads straight from this model), the rollouts' sampling, and checkpointing."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...common.devices import Device, Precision, cpu_threads_field
from ..fine_tuning import FineTuningParams
from ..lora import LoraParams

PromptFormat = Literal["auto", "prompt", "alpaca", "hh", "text"]


class PPOParams(FineTuningParams):
    """PPO settings; the defaults are the RLHF course's (trl classic PPOConfig values)."""

    reward_model_name_or_path: str | None = Field(
        None,
        description="a hub id or local directory of a sequence-classification reward model; when set, the "
        "stage takes no 'reward_model' input",
    )
    steps: int = Field(20, ge=1, description="PPO iterations; each samples batch_size prompts and responses")
    learning_rate: float = Field(1.41e-5, gt=0, description="AdamW learning rate of the policy and value head")
    batch_size: int = Field(32, ge=1, description="rollouts (prompt + sampled response) per PPO iteration")
    mini_batch_size: int = Field(4, ge=1, description="rollouts per forward/backward pass in the PPO epochs")
    gradient_accumulation_steps: int = Field(1, ge=1, description="mini-batches accumulated per optimizer step")
    ppo_epochs: int = Field(4, ge=1, description="optimisation passes over each batch of rollouts")
    init_kl_coef: float = Field(0.2, ge=0, description="initial KL penalty coefficient beta")
    adap_kl_ctrl: bool = Field(
        True, description="adapt beta towards target_kl (Ziegler et al. 2019); false: fixed beta"
    )
    target_kl: float = Field(
        0.1,
        gt=0,
        description="target KL (summed over response tokens, mean over the batch) of the adaptive controller",
    )
    horizon: float = Field(
        10000,
        gt=0,
        description="adaptive controller horizon: beta moves by at most 20% * batch_size / horizon per iteration",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount factor")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip range")
    cliprange_value: float = Field(0.2, gt=0, description="value prediction clip range")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    max_grad_norm: float | None = Field(1.0, ge=0, description="gradient clipping (None or 0: off)")
    whiten_rewards: bool = Field(False, description="normalise per-token rewards before GAE")
    score_clip: float | None = Field(None, gt=0, description="clip reward-model scores to +-score_clip")
    early_stop_kl: float | None = Field(
        None,
        description="stop a batch's PPO epochs when the approximate KL between the old and new policy exceeds "
        "1.5x this",
    )
    ratio_threshold: float = Field(
        10.0, gt=0, description="skip mini-batches whose mean probability ratio exceeds this"
    )
    max_new_tokens: int = Field(32, ge=1, description="response length limit of the rollouts")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off, pure sampling as in trl's PPO)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_prompt_length: int = Field(128, ge=4, description="prompts are cut to their last N tokens")
    prompt_format: PromptFormat = Field(
        "auto",
        description="where prompts come from: a 'prompt' column, Alpaca instruction/input (standard "
        "template), hh-rlhf texts (up to the last '\\n\\nAssistant:'), or a text column",
    )
    prompt_column: str = Field("prompt", description="column for prompt_format prompt")
    text_column: str = Field("text", description="column for prompt_format text")
    eval_prompts: int = Field(32, ge=1, description="held-out prompts for the mean reward before and after training")
    forward_batch_size: int = Field(16, ge=1, description="rollouts per generation / scoring forward pass")
    reward_batch_size: int = Field(16, ge=1, description="texts per reward-model forward pass")
    lora: LoraParams | None = Field(
        None,
        description="train a LoRA adapter (the reference is the base with the adapter disabled; merged into the "
        "output model)",
    )
    save_steps: int = Field(5, ge=1, description="checkpoint every N iterations (resume point after a crash)")
    logging_steps: int = Field(1, ge=1, description="log every N iterations")
    precision: Precision = Field("auto", description="bf16 autocast where the GPU has it, else fp32")
    device: Device = Field("auto", description="cpu, cuda or auto")
    cpu_threads: int | None = cpu_threads_field()
