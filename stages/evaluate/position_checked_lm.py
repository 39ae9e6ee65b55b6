"""lm-eval's ``HFLM`` with the model's positions checked before scoring.

lm-eval cuts a multiple-choice prompt that does not fit the model's positions
from the left (its command line does the same, so the numbers stay the
CLI's) and only logs it; an answer that alone is longer than the positions
fails deep inside it with a bare ``AssertionError``.  This class counts the
cut requests per task (the eval stage warns and reports them) and refuses an
answer that cannot fit with a message naming the task and the lengths.

This module imports lm-eval at the top: the harness imports it inside the
function that runs the tasks, never at validate time."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lm_eval.models.huggingface import HFLM

from recipe_runner import StageError

#: the task name of a request that lm-eval scores without one (rolling windows, which always fit)
UNNAMED = "?"

#: one request as ``_loglikelihood_tokens`` gets it: (strings, prompt token ids, answer token ids)
TokenRequest = tuple[tuple[str, str], list[int], list[int]]


class PositionCheckedLM(HFLM):
    """``HFLM`` that counts, per task, the loglikelihood requests whose prompt
    was cut to fit (``truncated``) out of all of them (``requests``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.truncated: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._task_names: list[str] | None = None

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's loglikelihood; the task of each request is kept for
        :meth:`_loglikelihood_tokens`, which gets them in the same order."""
        self._task_names = [r.task_name or UNNAMED for r in requests]
        try:
            result: list[tuple[float, bool]] = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._task_names = None
        return result

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        names = self._task_names if self._task_names is not None else [UNNAMED] * len(requests)
        for task, (_, prompt, answer) in zip(names, requests, strict=True):
            self.requests[task] += 1
            if len(prompt) + len(answer) > self.max_length + 1:
                self._check_answer_fits(task, len(answer))
                self.truncated[task] += 1
        result: list[tuple[float, bool]] = super()._loglikelihood_tokens(
            requests, disable_tqdm=disable_tqdm, override_bs=override_bs
        )
        return result

    def _check_answer_fits(self, task: str, answer_tokens: int) -> None:
        if answer_tokens > self.max_length:
            raise StageError(
                f"eval: task {task!r} scores an answer of {answer_tokens} tokens, more than the model's "
                f"{self.max_length} positions: a prompt is cut from the left to fit, an answer cannot be; "
                "evaluate a model with more positions (max_position_embeddings) or leave the task out"
            )
