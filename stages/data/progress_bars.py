"""datasets' own tqdm bars, turned off while a data stage runs: the runner
shows the stage's progress through ``ctx.progress``."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from recipe_runner import Stage, StageContext

S = TypeVar("S", bound=Stage[Any])
C = TypeVar("C", bound=StageContext[Any])
R = TypeVar("R")


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Turn off datasets' own bars for this block and restore the setting afterwards."""
    import datasets.utils.logging as dlog

    was = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            dlog.enable_progress_bar()


def with_quiet_datasets(run: Callable[[S, C], R]) -> Callable[[S, C], R]:
    """Decorate a data stage's ``run`` so datasets' own bars stay off while it runs."""

    @functools.wraps(run)
    def wrapper(self: S, ctx: C) -> R:
        with quiet_datasets():
            return run(self, ctx)

    return wrapper
