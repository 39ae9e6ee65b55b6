"""Reading the judge's free-form answers: scores and A / B / TIE verdicts."""

from __future__ import annotations

import pytest

from recipe_runner_stages.evaluate.judge.verdicts import parse_score, parse_verdict


@pytest.mark.parametrize(
    "text,expected",
    [
        ("85", 85),
        ("Score: 85/100", 85),
        ("**92**", 92),
        ("I'd say 77.6.", 78),
        ("1000 points... 45", 45),
        ("100", 100),
        ("0", 0),
        ("no number", None),
        ("", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("A", "A"),
        ("**B**", "B"),
        ("[[A]]", "A"),
        ("B. It is more accurate.", "B"),
        ("B is better.", "B"),
        ("Response A is better than response B.", "A"),
        ("A response with more detail is Response B", "B"),
        ("Verdict: B", "B"),
        ("The better response is B.", "B"),
        ("Tie", "TIE"),
        ("I cannot decide", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected
