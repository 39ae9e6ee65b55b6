"""Fixtures of the filter tests."""

from __future__ import annotations

import json
import random

import pytest

from recipe_runner.testing import run_stage
from recipe_runner_stages.data.filter.stage import FilterStage


@pytest.fixture()
def run_filter(save_texts, load_split):
    """``run_filter(tmp_path, texts, filters, name="f", **params) -> (kept texts, metrics)``:
    the filter stage over a dataset of ``texts``."""

    def run(tmp_path, texts, filters, name="f", **params):
        art = save_texts(tmp_path / f"{name}-in", texts)
        r = run_stage(FilterStage, {"filters": filters, **params}, inputs={"dataset": art}, workdir=tmp_path / name)
        return list(load_split(r.outputs["dataset"])["text"]), r.metrics

    return run


@pytest.fixture(scope="module")
def prose(data_dir) -> str:
    """Two real paragraphs of The Verdict: ordinary English prose."""
    text = (data_dir / "the-verdict.txt").read_text()
    paras = [p for p in text.split("\n\n") if len(p.split()) > 60]
    return "\n\n".join(paras[:2])


@pytest.fixture(scope="session")
def real_texts(data_dir) -> list[str]:
    """Real text, as the bench's corpus has it: the shipped prose and data files
    (one paragraph or record a document), the interpreter's documentation
    (.txt/.rst) and a sample of its standard library's .py files (one file a
    document); plus each of those documents with its paragraphs doubled."""
    import sysconfig
    from pathlib import Path

    texts: list[str] = []
    for name in ("tinyshakespeare.txt", "the-verdict.txt", "README.md"):
        texts += [p for p in (data_dir / name).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    texts += [
        json.dumps(r, ensure_ascii=False, indent=1)
        for r in json.loads((data_dir / "instruction-data.json").read_text())[:300]
    ]
    texts += (data_dir / "openbookqa.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = sorted(p for pattern in ("*.txt", "*.rst") for p in stdlib.rglob(pattern) if "site-packages" not in p.parts)
    code = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)[::12]
    for path in docs + code:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    doubled = ["\n\n".join(p for p in t.split("\n\n") for _ in range(2)) for t in texts[::7]]
    return texts + doubled


@pytest.fixture(scope="session")
def crafted_texts() -> list[str]:
    """Edge cases of the Gopher rules: nothing, whitespace only, one word,
    symbols only, repeated lines and paragraphs, unicode, every line break
    ``str.splitlines()`` knows, n-grams equal only once joined, and texts
    exactly at the published thresholds."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "iota", "kappa", "lambda"]
    fifty = " ".join(words[i % 10] + str(i // 10) for i in range(50)) + " the of"
    return [
        *["", " ", "\n", "\n\n\n", "\t \u3000\x85", "a", "a b", "...", "…", "#", "# # #", "-", "•", "the", "the be"],
        "x\n" * 10,
        "\n\n".join(["same paragraph here"] * 3),
        "line one\nline two\nline one\n\n\nline three\nline one",
        "Ünïcödé wörds and façade of the naïve café " * 12,
        "中文文本没有空格。" * 20,
        "😀 😀 the of 😀 " * 20,
        "«hello» „world“ ‘quoted’ (paren) [bracket] !!! ??? --- ... the of",
        "\x00a\x00 \x1cb\x1d c\x1e\x1f d\x85e\u2028f\u2029g\x0bh\x0ci\r\nj\rk the of",
        "ab c d e f q a bc d e f then ab cd e f g q a bcd e fg",
        "\n".join(f"line {i} of the text with words" for i in range(7)) + "\n" + "\n".join(["dup line"] * 3),
        fifty,
        " ".join(fifty.split()[:-3]) + " of",
        " ".join(["abc"] * 40 + ["the", "of"] * 5),
        " ".join(["abcdefghij"] * 40 + ["the", "of"] * 5),
        " ".join(["w#"] * 45 + ["the", "of"] * 2 + ["#"] * 5),
        "\n".join(["• the item of note"] * 9 + ["closing line of the text"]),
        "\n".join([f"- item {i} of the list..." for i in range(3)] + [f"plain line {i} of the text" for i in range(7)]),
        *[_repeated_phrase(n) for n in range(6, 11)],
    ]


def _repeated_phrase(n: int) -> str:
    """A phrase of n words, twice, among unique words, which the paper's
    duplicated n-gram rule drops and none before it: the phrase's first four
    words are short (so is the most frequent 2-, 3- and 4-gram, its start), the
    others long, and the text's length is chosen between what the shorter
    n-grams' rules allow and what the n-gram's rule does not."""
    long = 100
    phrase = ["a", "b", "c", "d"] + [f"w{n:02d}{i:02d}".ljust(long, "x") for i in range(n - 4)]

    def covered(m: int) -> float:  # characters of the phrase in duplicated m-grams, over the paper's fraction
        return (4 + (n // m * m - 4) * long) / (0.2 - 0.01 * m)

    size = (max(covered(m) for m in range(5, n)) + covered(n)) / 2
    fillers = [f"f{i:09d}" for i in range(round((size - 2 * len(" ".join(phrase))) / 11))]
    return " ".join(fillers[: len(fillers) // 2] + phrase + fillers[len(fillers) // 2 :] + phrase)


@pytest.fixture(scope="session")
def fuzz_texts() -> list[str]:
    """Random texts from a few short words, punctuation and separators: many
    repeated n-grams, ties between them, words that join into the same
    characters differently split ('ab c' and 'a bc'), bullets and ellipses."""
    rng = random.Random(0)
    vocab = ["a", "b", "ab", "ba", "aba", "the", "of", "and", "#", "...", "…", "•", "-", "«x»", "é", "日本", "1,000"]
    vocab += ["--", "!!", "'", "word", "words", "to", "be", "x.", "(y)"]
    seps = [" "] * 12 + ["  ", "\n", "\n\n", "\t", "\u3000", "\r\n", "\x85", "\n- ", "\n• ", "...\n"]
    texts = []
    for _ in range(1500):
        size = rng.choice([1, 3, 8, 20, 60, 150, 400])
        pool = rng.sample(vocab, rng.randint(2, len(vocab)))
        parts = [rng.choice(pool) + rng.choice(seps) for _ in range(size)]
        texts.append("".join(parts) if rng.random() < 0.8 else "".join(parts).strip())
    return texts


@pytest.fixture(scope="session")
def datatrove_reasons():
    """``datatrove_reasons(options, texts) -> list[str]``: what datatrove's own
    filter (``options['type']``: gopher_repetition or gopher_quality, the
    ``simple`` splitter) says of each text, one by one: '' when kept, else its
    reason ('empty' for an empty text, 'no_words' where datatrove divides by
    zero, as the filter stage has always reported them)."""
    import pyarrow as pa

    from recipe_runner_stages.data.filter.registry import load_filter

    def reasons(options: dict, texts: list[str]) -> list[str]:
        cls = load_filter(options["type"])
        document_filter = cls(cls.Options.model_validate(options))
        return list(document_filter.decide_per_document(pa.array(texts, pa.string())).reasons)

    return reasons


@pytest.fixture(scope="session")
def batch_reasons():
    """``batch_reasons(options, texts, batch_size)``: the reason each text is dropped ('' kept) by the
    filter ``options`` names, deciding ``batch_size`` texts at a time as the stage does."""
    import pyarrow as pa

    from recipe_runner_stages.data.filter.registry import load_filter

    def reasons(options: dict, texts: list[str], batch_size: int) -> list[str]:
        cls = load_filter(options["type"])
        document_filter = cls(cls.Options.model_validate(options))
        out: list[str] = []
        for a in range(0, len(texts), batch_size):
            decision = document_filter.decide(pa.array(texts[a : a + batch_size], pa.string()))
            assert list(decision.keep) == [r == "" for r in decision.reasons]
            out += list(decision.reasons)
        return out

    return reasons
