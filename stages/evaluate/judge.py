"""LLM-as-a-judge for instruction-tuned models, as the instruction-tuning
tutorials do it.

Two modes:

- ``score``: the judge scores each response 0-100 against the reference
  answer with the prompt of rasbt's LLMs-from-scratch, chapter 7.
- ``compare``: the judge sees two models' responses to the same instruction
  and picks the better one; every pair is asked twice with the order swapped,
  only verdicts that agree in both orders count, and the flips (position
  bias) are reported.

The judge is either a causal LM (a local directory or a hub id, run with
transformers) or an OpenAI-compatible chat-completions endpoint (``base_url``,
``model``; the API key is read from the environment variable the recipe
names, never from the recipe itself).

API (the eval stage calls these):

- ``JudgeParams``: the ``judge:`` section of a recipe.
- ``generate_responses(model_path, items, ...)``: greedy responses of a model
  to a list of instructions (Alpaca template, chat template or raw prompt).
- ``run_judge(params, responses, log) -> (rows, metrics)``.
- ``save_table(rows, out_dir, stem)``: rows as JSONL and CSV.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from recipe_runner.stage import Params, StageError

from ..common.generation import GenerationSettings, generate_texts
from ..common.models import load_for_inference
from ..common.prompts import alpaca_prompt, chat_prompt

SCORE_PROMPT = (
    "Given the input `{instruction_and_input}` and correct output `{output}`, score the model response "
    "`{response}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)

COMPARE_PROMPT = (
    "You are a fair judge. Two assistants answered the same instruction. Decide which answer is better: "
    "more helpful, correct and relevant.\n\n"
    "### Instruction:\n{instruction_and_input}\n\n"
    "{reference_block}"
    "### Response A:\n{first}\n\n"
    "### Response B:\n{second}\n\n"
    "Answer with the single letter A or B (or TIE) on the first line, then give a one-sentence reason."
)


class EndpointParams(Params):
    """An OpenAI-compatible chat-completions endpoint used as the judge."""

    base_url: str = Field(..., description="API base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 "
                                           "(the request goes to {base_url}/chat/completions)")
    model: str = Field(..., description="model name the endpoint serves, e.g. gpt-4o-mini or llama3")
    api_key_env: str | None = Field(
        None, description="name of the environment variable that holds the API key (sent as a Bearer token); "
                          "never put the key itself in a recipe. None: no Authorization header (local servers)")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout in seconds")
    max_retries: int = Field(2, ge=0, description="retries of a failed request (connection errors, HTTP 429/5xx)")


class JudgeParams(Params):
    """LLM-as-a-judge settings (the eval stage's optional `judge:` section)."""

    mode: Literal["score", "compare"] = Field(
        "score", description="score: 0-100 against the reference answer (rasbt LLMs-from-scratch ch07); "
                             "compare: pick the better of two models' responses, asked in both orders")
    model: str | None = Field(None, description="judge causal LM: a local directory or hub id (e.g. "
                                                "meta-llama/Meta-Llama-3-8B-Instruct); or set 'endpoint'; or leave "
                                                "both unset and connect the eval stage's judge_model input")
    endpoint: EndpointParams | None = Field(None, description="use an OpenAI-compatible API as the judge instead of a local model")
    max_new_tokens: int = Field(64, ge=1, description="tokens the judge may generate per verdict")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call of a local judge")
    max_examples: int | None = Field(None, ge=1, description="judge at most this many responses (None: all)")
    swap_order: bool = Field(True, description="compare mode: ask each pair twice, A/B and B/A, and keep only consistent verdicts")
    label_a: str = Field("a", description="compare mode: name of the first model in the metrics (e.g. 'before')")
    label_b: str = Field("b", description="compare mode: name of the second model in the metrics (e.g. 'after')")
    score_prompt: str = Field(SCORE_PROMPT, description="score-mode prompt; fields {instruction_and_input}, {output}, {response}")
    compare_prompt: str = Field(COMPARE_PROMPT, description="compare-mode prompt; fields {instruction_and_input}, "
                                                             "{reference_block}, {first}, {second}")
    use_chat_template: bool = Field(True, description="local judge: wrap the prompt in the tokenizer's chat template when it has one")
    data: str | None = Field(
        None, description="instructions to answer: a .json / .jsonl file of Alpaca records (instruction, input, "
                          "output = the reference); None = the eval stage's dataset input when it has those columns")
    num_examples: int = Field(20, ge=1, description="instructions taken from the end of the data (the part an "
                                                    "instruction-tuning recipe holds out)")
    template: Literal["alpaca", "chat", "raw"] = Field(
        "alpaca", description="how the evaluated models are prompted: the standard Alpaca template, the "
                              "tokenizer's chat template, or the bare instruction")
    response_max_new_tokens: int = Field(96, ge=1, description="tokens each evaluated model may generate per response")
    baseline_model: str | None = Field(
        None, description="compare mode: the other model (local dir or hub id) when the eval stage has no "
                          "baseline model input wired; its responses are 'a', the evaluated model's are 'b'")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device of a local judge model")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="dtype of a local judge model")

    @model_validator(mode="after")
    def _one_judge(self) -> "JudgeParams":
        if self.model is not None and self.endpoint is not None:
            raise ValueError("judge: set only one of 'model' (a local or hub causal LM) and 'endpoint'")
        return self


# ------------------------------------------------------------------ prompts


def format_instruction(item: dict[str, Any]) -> str:
    """Instruction plus optional input, as rasbt's ch07 format_input does."""
    instr = str(item.get("instruction") or item.get("prompt") or "")
    inp = item.get("input")
    if inp and str(inp).strip():
        return f"{instr}\n\n{inp}"
    return instr


def _alpaca_or_raw(item: dict[str, Any], template: str) -> str:
    if "prompt" in item and item.get("prompt") and "instruction" not in item:
        return str(item["prompt"])
    if template == "alpaca":
        return alpaca_prompt(str(item.get("instruction", "")), item.get("input"))
    return format_instruction(item)


# ------------------------------------------------------------------ generation


def _greedy_texts(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
                  repetition_penalty: float | None = None) -> list[str]:
    """Greedy continuations of ``prompts``, stripped."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty or None)
    return [t.strip() for t in generate_texts(model, tokenizer, prompts, settings, batch_size=batch_size)]


def generate_responses(model_path: str | None, items: list[dict[str, Any]], *, template: str = "alpaca",
                       max_new_tokens: int = 128, batch_size: int = 8, device: str = "auto",
                       precision: str = "auto", model: Any = None, tokenizer: Any = None,
                       repetition_penalty: float | None = None) -> list[str]:
    """Greedy responses of a model to instructions.

    ``items`` are dicts with ``instruction`` (+ optional ``input``) or a ready
    ``prompt``.  ``template``: ``alpaca`` (the standard Alpaca prompt), ``chat``
    (the tokenizer's chat template, one user turn) or ``raw`` (instruction and
    input as plain text).  Pass a loaded ``model``/``tokenizer`` to skip loading."""
    if model is None or tokenizer is None:
        if model_path is None:
            raise ValueError("generate_responses needs model_path or a loaded model and tokenizer")
        model, tokenizer = load_for_inference(model_path, device, precision)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise StageError(f"template 'chat': the tokenizer of {model_path} has no chat template")
        prompts = [chat_prompt(tokenizer, format_instruction(it)) for it in items]
    else:
        prompts = [_alpaca_or_raw(it, template) for it in items]
    return _greedy_texts(model, tokenizer, prompts, max_new_tokens, batch_size, repetition_penalty)


# ------------------------------------------------------------------ parsing

def parse_score(text: str) -> int | None:
    """The first number in 0..100 in the judge's answer ("85", "Score: 85/100",
    "**85**", "85.5" -> 86); None when there is none."""
    if text is None:
        return None
    for m in re.finditer(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)(?![\d])", str(text)):
        v = float(m.group(1))
        if 0 <= v <= 100:
            return int(round(v))
    return None


# (pattern, where): "first" = the answer's first line, "all" = the whole answer
_VERDICT_PATTERNS = [
    (re.compile(r"\[\[\s*(A|B|TIE)\s*\]\]", re.I), "all"),
    (re.compile(r"^[\W_]*(A|B|TIE)[\W_]*$", re.I), "first"),              # "A", "**B**", "(A)", "Tie."
    (re.compile(r"^[\W_]*(A|B)\s*[.:),\-]"), "first"),                     # "A. Because", "B: ..."
    (re.compile(r"^[\W_]*(A|B)\s+(?:is|wins|was)\b", re.I), "first"),      # "B is better"
    (re.compile(r"\b(?:response|answer|option|assistant)\s*\(?(A|B)\)?\s+(?:is|was)?\s*(?:better|superior|preferred|wins)",
                re.I), "all"),
    (re.compile(r"\b(?:verdict|winner|choice|preferred|better response)\s*(?:is|:|=)?\s*(?:response\s*)?\(?(A|B|TIE)\b",
                re.I), "all"),
    (re.compile(r"\bresponse\s*(A|B)\b", re.I), "all"),
]


def parse_verdict(text: str) -> str | None:
    """'A', 'B', 'TIE' or None from a free-form judge answer: "[[A]]", "B",
    "A. Because ...", "Response B is better", "Verdict: A", "Tie", ..."""
    if not text:
        return None
    t = str(text).strip()
    lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    for pat, where in _VERDICT_PATTERNS:
        m = pat.search(first if where == "first" else t)
        if m:
            return m.group(1).upper()
    return None


def _reason(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if len(lines) > 1:
        return " ".join(lines[1:])[:500]
    return lines[0][:500] if lines else ""


# ------------------------------------------------------------------ judges


class _LocalJudge:
    def __init__(self, p: JudgeParams, path: str):
        self.p = p
        self.model, self.tok = load_for_inference(path, p.device, p.precision)

    def __call__(self, prompts: list[str]) -> list[str]:
        if self.p.use_chat_template and getattr(self.tok, "chat_template", None):
            prompts = [chat_prompt(self.tok, q) for q in prompts]
        else:
            prompts = [q + "\n\n" for q in prompts]
        return _greedy_texts(self.model, self.tok, prompts, self.p.max_new_tokens, self.p.batch_size)


class _EndpointJudge:
    def __init__(self, p: JudgeParams):
        self.e = p.endpoint
        self.max_new_tokens = p.max_new_tokens
        self.key = None
        if self.e.api_key_env:
            self.key = os.environ.get(self.e.api_key_env)
            if not self.key:
                raise StageError(f"judge endpoint: the environment variable {self.e.api_key_env!r} "
                                 f"(endpoint.api_key_env) is not set; export the API key there")

    def _one(self, prompt: str) -> str:
        import urllib.error
        import urllib.request

        url = self.e.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.e.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": self.max_new_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last: Exception | None = None
        for attempt in range(self.e.max_retries + 1):
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.e.timeout_s) as r:
                    data = json.loads(r.read().decode())
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                last = e
                if e.code not in (408, 429) and e.code < 500:
                    raise StageError(f"judge endpoint {url}: HTTP {e.code}: {e.read()[:300]!r}") from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            except (KeyError, IndexError, ValueError) as e:
                raise StageError(f"judge endpoint {url}: unexpected answer (not a chat completion): {e}") from e
            time.sleep(min(8.0, 0.5 * 2 ** attempt))
        raise StageError(f"judge endpoint {url}: no answer after {self.e.max_retries + 1} tries: {last}")

    def __call__(self, prompts: list[str]) -> list[str]:
        return [self._one(q) for q in prompts]


def make_judge(p: JudgeParams, model_path: str | None = None) -> Callable[[list[str]], list[str]]:
    """The judge callable (prompts -> answers): the endpoint, ``p.model``, or
    ``model_path`` (e.g. the eval stage's judge_model input)."""
    if p.endpoint is not None:
        return _EndpointJudge(p)
    path = p.model or model_path
    if not path:
        raise StageError("judge: no judge model: set judge.model (a local dir or hub id), judge.endpoint, or "
                         "connect a judge_model input")
    return _LocalJudge(p, path)


def _reference_block(item: dict[str, Any]) -> str:
    ref = item.get("output")
    return f"### Reference answer:\n{ref}\n\n" if ref else ""


def run_judge(params: JudgeParams, responses: list[dict[str, Any]], log: logging.Logger | None = None,
              judge: Callable[[list[str]], list[str]] | None = None,
              judge_model_path: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge ``responses`` and return (rows, metrics).

    score mode: each item has ``instruction`` (+ ``input``), ``output`` (the
    reference) and ``response``; rows gain ``score`` (0-100 or None) and
    ``judge_raw``.  Metrics: ``judge_mean_score``, ``judge_scored``,
    ``judge_unparsed``.

    compare mode: each item has ``instruction`` (+ ``input``, optional
    ``output`` reference), ``response_a`` and ``response_b``; rows gain
    ``verdict_ab`` (asked with a first), ``verdict_ba`` (b first, mapped back
    to a/b), ``winner`` (a / b / tie, or None when inconsistent or unparsed),
    ``consistent`` and ``reason``.  Metrics: ``judge_win_rate_<label>`` over
    consistent verdicts, ``judge_tie_rate``, ``judge_consistent``,
    ``judge_flipped`` (both orders parsed but disagreeing), ``judge_unparsed``.

    ``judge``: an already built judge callable (prompts -> answers), for reuse;
    ``judge_model_path``: the judge model when ``params`` names none."""
    log = log or logging.getLogger(__name__)
    items = list(responses)
    if params.max_examples:
        items = items[: params.max_examples]
    if not items:
        return [], {}
    judge = judge or make_judge(params, judge_model_path)
    if params.mode == "score":
        return _run_score(params, items, judge, log)
    return _run_compare(params, items, judge, log)


def _run_score(p: JudgeParams, items: list[dict[str, Any]], judge, log) -> tuple[list[dict], dict]:
    for k in ("response", "output"):
        if any(k not in it for it in items):
            raise StageError(f"judge (score mode): every item needs {k!r} (the model's response and the reference output)")
    prompts = [p.score_prompt.format(instruction_and_input=format_instruction(it), output=it["output"],
                                     response=it["response"]) for it in items]
    answers = judge(prompts)
    rows, scores = [], []
    for it, ans in zip(items, answers):
        s = parse_score(ans)
        rows.append({**it, "score": s, "judge_raw": ans})
        if s is not None:
            scores.append(s)
    metrics: dict[str, Any] = {"judge_mode": "score", "judge_n": len(items), "judge_scored": len(scores),
                               "judge_unparsed": len(items) - len(scores)}
    if scores:
        metrics["judge_mean_score"] = sum(scores) / len(scores)
    log.info("judge: mean score %s over %d of %d responses", metrics.get("judge_mean_score"), len(scores), len(items))
    return rows, metrics


def _run_compare(p: JudgeParams, items: list[dict[str, Any]], judge, log) -> tuple[list[dict], dict]:
    for k in ("response_a", "response_b"):
        if any(k not in it for it in items):
            raise StageError(f"judge (compare mode): every item needs 'response_a' and 'response_b'")

    def prompt(it, first, second):
        return p.compare_prompt.format(instruction_and_input=format_instruction(it),
                                       reference_block=_reference_block(it), first=first, second=second)

    ab = judge([prompt(it, it["response_a"], it["response_b"]) for it in items])
    ba = judge([prompt(it, it["response_b"], it["response_a"]) for it in items]) if p.swap_order else [None] * len(items)
    to_ab = {"A": "a", "B": "b", "TIE": "tie"}
    swapped = {"A": "b", "B": "a", "TIE": "tie"}
    rows = []
    wins = {"a": 0, "b": 0, "tie": 0}
    flipped = unparsed = consistent = 0
    for it, r1, r2 in zip(items, ab, ba):
        v1 = to_ab.get(parse_verdict(r1) or "")
        v2 = swapped.get(parse_verdict(r2) or "") if p.swap_order else v1
        if v1 is None or v2 is None:
            unparsed += 1
            winner, ok = None, False
        elif v1 == v2:
            consistent += 1
            winner, ok = v1, True
            wins[v1] += 1
        else:
            flipped += 1
            winner, ok = None, False
        rows.append({**it, "verdict_ab": v1, "verdict_ba": v2 if p.swap_order else None, "winner": winner,
                     "consistent": ok, "reason": _reason(r1), "judge_raw_ab": r1, "judge_raw_ba": r2})
    metrics: dict[str, Any] = {"judge_mode": "compare", "judge_n": len(items), "judge_consistent": consistent,
                               "judge_flipped": flipped, "judge_unparsed": unparsed}
    if consistent:
        metrics[f"judge_win_rate_{p.label_a}"] = wins["a"] / consistent
        metrics[f"judge_win_rate_{p.label_b}"] = wins["b"] / consistent
        metrics["judge_tie_rate"] = wins["tie"] / consistent
    log.info("judge: %d consistent verdicts (%s %d, %s %d, tie %d), %d flipped with the order, %d unparsed",
             consistent, p.label_a, wins["a"], p.label_b, wins["b"], wins["tie"], flipped, unparsed)
    return rows, metrics


def load_instruction_items(path: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """Alpaca records (instruction / input / output) from a .json list or a
    .jsonl file; the last ``n`` of them (the held-out tail)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"judge.data: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = json.loads(text)
    except ValueError as e:
        raise StageError(f"judge.data: {path} is not valid JSON / JSONL: {e}") from e
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) and "instruction" in x for x in items):
        raise StageError(f"judge.data: {path} must hold a list of records with an 'instruction' field")
    return items[-n:] if n else items


def judge_models(params: JudgeParams, model_path: str, items: list[dict[str, Any]],
                 baseline_path: str | None = None, log: logging.Logger | None = None,
                 device: str = "auto", precision: str = "auto",
                 judge_model_path: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The whole judge step of an eval stage: generate the evaluated model's
    responses to ``items`` (and, in compare mode, the baseline's), then judge.
    Score mode needs each item's reference ``output``."""
    log = log or logging.getLogger(__name__)
    items = list(items)[-params.num_examples:]
    gen = dict(template=params.template, max_new_tokens=params.response_max_new_tokens, device=device,
               precision=precision)
    log.info("judge: generating %d responses with %s", len(items), model_path)
    responses = generate_responses(model_path, items, **gen)
    if params.mode == "score":
        return run_judge(params, [{**it, "response": r} for it, r in zip(items, responses)], log,
                         judge_model_path=judge_model_path)
    baseline_path = baseline_path or params.baseline_model
    if not baseline_path:
        raise StageError("judge (compare mode) needs a second model: a baseline model input or judge.baseline_model")
    log.info("judge: generating %d baseline responses with %s", len(items), baseline_path)
    base_responses = generate_responses(baseline_path, items, **gen)
    pairs = [{**it, "response_a": a, "response_b": b} for it, a, b in zip(items, base_responses, responses)]
    return run_judge(params, pairs, log, judge_model_path=judge_model_path)


def save_table(rows: list[dict[str, Any]], out_dir: str | Path, stem: str = "judge") -> dict[str, str]:
    """Write rows as ``<stem>.jsonl`` and ``<stem>.csv``; returns the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jl, cs = out / f"{stem}.jsonl", out / f"{stem}.csv"
    with jl.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with cs.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return {"jsonl": jl.name, "csv": cs.name}
