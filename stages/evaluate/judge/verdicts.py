"""Reading a judge's free-form answer: a 0-100 score, an A / B / TIE verdict,
and the reason given after it."""

from __future__ import annotations

import re

# (pattern, where): "first" = the answer's first line, "all" = the whole answer
_VERDICT_PATTERNS = [
    (re.compile(r"\[\[\s*(A|B|TIE)\s*\]\]", re.I), "all"),
    (re.compile(r"^[\W_]*(A|B|TIE)[\W_]*$", re.I), "first"),  # "A", "**B**", "(A)", "Tie."
    (re.compile(r"^[\W_]*(A|B)\s*[.:),\-]"), "first"),  # "A. Because", "B: ..."
    (re.compile(r"^[\W_]*(A|B)\s+(?:is|wins|was)\b", re.I), "first"),  # "B is better"
    (
        re.compile(
            r"\b(?:response|answer|option|assistant)\s*\(?(A|B)\)?\s+(?:is|was)?\s*(?:better|superior|preferred|wins)",
            re.I,
        ),
        "all",
    ),
    (
        re.compile(
            r"\b(?:verdict|winner|choice|preferred|better response)\s*(?:is|:|=)?\s*(?:response\s*)?\(?(A|B|TIE)\b",
            re.I,
        ),
        "all",
    ),
    (re.compile(r"\bresponse\s*(A|B)\b", re.I), "all"),
]


def parse_score(text: str | None) -> int | None:
    """The first number in 0..100 in the judge's answer ("85", "Score: 85/100",
    "**85**", "85.5" -> 86); None when there is none."""
    if text is None:
        return None
    for m in re.finditer(r"(?<![\d.])(\d{1,3}(?:\.\d+)?)(?![\d])", str(text)):
        v = float(m.group(1))
        if 0 <= v <= 100:
            return int(round(v))
    return None


def parse_verdict(text: str | None) -> str | None:
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


def verdict_reason(text: str | None) -> str:
    """The reason the judge gave: the lines after the verdict line (or the
    only line), at most 500 characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if len(lines) > 1:
        return " ".join(lines[1:])[:500]
    return lines[0][:500] if lines else ""
