"""The eval stage's ``judge:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recipe_runner import Params, run_setting

from .prompts import COMPARE_PROMPT, SCORE_PROMPT


class EndpointParams(Params):
    """An OpenAI-compatible chat-completions endpoint used as the judge."""

    base_url: str = Field(
        ...,
        description="API base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 "
        "(the request goes to {base_url}/chat/completions)",
    )
    model: str = Field(..., description="model name the endpoint serves, e.g. gpt-4o-mini or llama3")
    api_key_env: str | None = Field(
        default=None,
        description="name of the environment variable that holds the API key (sent as a Bearer token); "
        "never put the key itself in a recipe. None: no Authorization header (local servers)",
    )
    # how long to wait and how often to ask again change whether a request gets an answer, not the answer:
    # run settings (out of the stage's key and its report)
    timeout_s: float = run_setting(60.0, gt=0, allow_inf_nan=False, description="per-request timeout in seconds")
    max_retries: int = run_setting(
        2, ge=0, description="retries of a failed request (connection errors, timeouts, HTTP 408/429/5xx)"
    )


class JudgeParams(Params):
    """LLM-as-a-judge settings (the eval stage's optional `judge:` section)."""

    mode: Literal["score", "compare"] = Field(
        "score",
        description="score: 0-100 against the reference answer (rasbt LLMs-from-scratch ch07); "
        "compare: pick the better of two models' responses, asked in both orders",
    )
    model: str | None = Field(
        None,
        description="judge causal LM: a local directory or hub id (e.g. "
        "meta-llama/Meta-Llama-3-8B-Instruct); or set 'endpoint'; or leave "
        "both unset and connect the eval stage's judge_model input",
    )
    endpoint: EndpointParams | None = Field(
        None, description="use an OpenAI-compatible API as the judge instead of a local model"
    )
    max_new_tokens: int = Field(64, ge=1, description="tokens the judge may generate per verdict")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call of a local judge")
    max_examples: int | None = Field(None, ge=1, description="judge at most this many responses (None: all)")
    swap_order: bool = Field(
        True, description="compare mode: ask each pair twice, A/B and B/A, and keep only consistent verdicts"
    )
    label_a: str = Field("a", description="compare mode: name of the first model in the metrics (e.g. 'before')")
    label_b: str = Field("b", description="compare mode: name of the second model in the metrics (e.g. 'after')")
    score_prompt: str = Field(
        SCORE_PROMPT, description="score-mode prompt; fields {instruction_and_input}, {output}, {response}"
    )
    compare_prompt: str = Field(
        COMPARE_PROMPT,
        description="compare-mode prompt; fields {instruction_and_input}, {reference_block}, {first}, {second}",
    )
    use_chat_template: bool = Field(
        True, description="local judge: wrap the prompt in the tokenizer's chat template when it has one"
    )
    data: str | None = Field(
        None,
        description="instructions to answer: a .json / .jsonl file of Alpaca records (instruction, input, "
        "output = the reference); None = the eval stage's dataset input when it has those columns",
    )
    num_examples: int = Field(
        20,
        ge=1,
        description="instructions taken from the end of the data (the part an instruction-tuning recipe holds out)",
    )
    template: Literal["alpaca", "chat", "raw"] = Field(
        "alpaca",
        description="how the evaluated models are prompted: the standard Alpaca template, the "
        "tokenizer's chat template, or the bare instruction",
    )
    response_max_new_tokens: int = Field(96, ge=1, description="tokens each evaluated model may generate per response")
    baseline_model: str | None = Field(
        None,
        description="compare mode: the other model (local dir or hub id) when the eval stage has no "
        "baseline model input wired; its responses are 'a', the evaluated model's are 'b'",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device of a local judge model")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="dtype of a local judge model")

    @model_validator(mode="after")
    def _one_judge(self) -> JudgeParams:
        if self.model is not None and self.endpoint is not None:
            raise ValueError("judge: set only one of 'model' (a local or hub causal LM) and 'endpoint'")
        return self
