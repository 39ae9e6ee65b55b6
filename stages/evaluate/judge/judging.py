"""Judging responses: score mode (0-100 against the reference) and compare
mode (two models' responses, asked in both orders), and the whole judge step
of an eval stage (generate the responses, then judge them)."""

from __future__ import annotations

import logging
from typing import Any

from recipe_runner import StageError

from .judges import Judge, make_judge
from .params import JudgeParams
from .prompts import format_instruction, reference_block
from .responses import generate_responses
from .verdicts import parse_score, parse_verdict, verdict_reason

Rows = list[dict[str, Any]]

#: a verdict asked with a first / with b first, as a winner among a, b, tie
_AS_ASKED = {"A": "a", "B": "b", "TIE": "tie"}
_SWAPPED = {"A": "b", "B": "a", "TIE": "tie"}


def run_judge(
    params: JudgeParams,
    responses: list[dict[str, Any]],
    log: logging.Logger | None = None,
    judge: Judge | None = None,
    judge_model_path: str | None = None,
) -> tuple[Rows, dict[str, Any]]:
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


def _run_score(p: JudgeParams, items: Rows, judge: Judge, log: logging.Logger) -> tuple[Rows, dict[str, Any]]:
    for k in ("response", "output"):
        if any(k not in it for it in items):
            raise StageError(
                f"judge (score mode): every item needs {k!r} (the model's response and the reference output)"
            )
    prompts = [
        p.score_prompt.format(
            instruction_and_input=format_instruction(it), output=it["output"], response=it["response"]
        )
        for it in items
    ]
    rows, scores = [], []
    for it, ans in zip(items, judge(prompts), strict=False):
        s = parse_score(ans)
        rows.append({**it, "score": s, "judge_raw": ans})
        if s is not None:
            scores.append(s)
    metrics: dict[str, Any] = {
        "judge_mode": "score",
        "judge_n": len(items),
        "judge_scored": len(scores),
        "judge_unparsed": len(items) - len(scores),
    }
    if scores:
        metrics["judge_mean_score"] = sum(scores) / len(scores)
    log.info("judge: mean score %s over %d of %d responses", metrics.get("judge_mean_score"), len(scores), len(items))
    return rows, metrics


def _run_compare(p: JudgeParams, items: Rows, judge: Judge, log: logging.Logger) -> tuple[Rows, dict[str, Any]]:
    if any(k not in it for it in items for k in ("response_a", "response_b")):
        raise StageError("judge (compare mode): every item needs 'response_a' and 'response_b'")

    def prompt(it: dict[str, Any], first: str, second: str) -> str:
        return p.compare_prompt.format(
            instruction_and_input=format_instruction(it),
            reference_block=reference_block(it),
            first=first,
            second=second,
        )

    ab = judge([prompt(it, it["response_a"], it["response_b"]) for it in items])
    ba: list[str | None] = [None] * len(items)
    if p.swap_order:
        ba = list(judge([prompt(it, it["response_b"], it["response_a"]) for it in items]))
    rows = [_compared_row(it, r1, r2, p.swap_order) for it, r1, r2 in zip(items, ab, ba, strict=False)]
    metrics = _compare_metrics(p, rows)
    log.info(
        "judge: %d consistent verdicts (%s %d, %s %d, tie %d), %d flipped with the order, %d unparsed",
        metrics["judge_consistent"],
        p.label_a,
        sum(r["winner"] == "a" for r in rows),
        p.label_b,
        sum(r["winner"] == "b" for r in rows),
        sum(r["winner"] == "tie" for r in rows),
        metrics["judge_flipped"],
        metrics["judge_unparsed"],
    )
    return rows, metrics


def _compared_row(item: dict[str, Any], r1: str, r2: str | None, swapped: bool) -> dict[str, Any]:
    """One pair's row: the verdict in each order, the winner when both orders
    agree (None when they flip or one is unparsed)."""
    v1 = _AS_ASKED.get(parse_verdict(r1) or "")
    v2 = _SWAPPED.get(parse_verdict(r2) or "") if swapped else v1
    consistent = v1 is not None and v1 == v2
    return {
        **item,
        "verdict_ab": v1,
        "verdict_ba": v2 if swapped else None,
        "winner": v1 if consistent else None,
        "consistent": consistent,
        "reason": verdict_reason(r1),
        "judge_raw_ab": r1,
        "judge_raw_ba": r2,
    }


def _compare_metrics(p: JudgeParams, rows: Rows) -> dict[str, Any]:
    unparsed = sum(r["verdict_ab"] is None or (p.swap_order and r["verdict_ba"] is None) for r in rows)
    consistent = sum(bool(r["consistent"]) for r in rows)
    metrics: dict[str, Any] = {
        "judge_mode": "compare",
        "judge_n": len(rows),
        "judge_consistent": consistent,
        "judge_flipped": len(rows) - consistent - unparsed,
        "judge_unparsed": unparsed,
    }
    if consistent:
        wins = {w: sum(r["winner"] == w for r in rows) for w in ("a", "b", "tie")}
        metrics[f"judge_win_rate_{p.label_a}"] = wins["a"] / consistent
        metrics[f"judge_win_rate_{p.label_b}"] = wins["b"] / consistent
        metrics["judge_tie_rate"] = wins["tie"] / consistent
    return metrics


def judge_models(
    params: JudgeParams,
    model_path: str,
    items: list[dict[str, Any]],
    baseline_path: str | None = None,
    log: logging.Logger | None = None,
    device: str = "auto",
    precision: str = "auto",
    judge_model_path: str | None = None,
) -> tuple[Rows, dict[str, Any]]:
    """The whole judge step of an eval stage: generate the evaluated model's
    responses to ``items`` (and, in compare mode, the baseline's), then judge.
    Score mode needs each item's reference ``output``."""
    log = log or logging.getLogger(__name__)
    items = list(items)[-params.num_examples :]

    def responses_of(path: str) -> list[str]:
        return generate_responses(
            path,
            items,
            template=params.template,
            max_new_tokens=params.response_max_new_tokens,
            device=device,
            precision=precision,
        )

    log.info("judge: generating %d responses with %s", len(items), model_path)
    responses = responses_of(model_path)
    if params.mode == "score":
        scored = [{**it, "response": r} for it, r in zip(items, responses, strict=False)]
        return run_judge(params, scored, log, judge_model_path=judge_model_path)
    baseline_path = baseline_path or params.baseline_model
    if not baseline_path:
        raise StageError("judge (compare mode) needs a second model: a baseline model input or judge.baseline_model")
    log.info("judge: generating %d baseline responses with %s", len(items), baseline_path)
    base_responses = responses_of(baseline_path)
    pairs = [
        {**it, "response_a": a, "response_b": b} for it, a, b in zip(items, base_responses, responses, strict=False)
    ]
    return run_judge(params, pairs, log, judge_model_path=judge_model_path)
