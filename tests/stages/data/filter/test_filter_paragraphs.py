"""The course's two filters (paragraph_length, paragraph_repetition)
against a verbatim copy of the notebook's code on real text."""

from __future__ import annotations

from recipe_runner_stages.data.course_reference import paragraph_length_filter, paragraph_repetition_filter

TRICKY = [
    "a\n\nb\n\na\n\na",  # repeated paragraphs
    "\x1c\n\nx\n\nx\n\n\x1c",  # str.strip() strips \x1c (unicode whitespace rules)
    "\u3000first\n\n\n\nfirst\n\nsecond\u2028",  # ideographic space, line separator
    "ab\nabc\nabcd",  # only 2 lines of >= 3 chars
    "é\n\né\n\né\nxyz\nxyzw\nxx",  # non-ASCII lengths
    "x" * 10 + "\r\n\r\n" + "x" * 10,  # \r\n is not a paragraph break
    "one\ntwo\nthree\n",  # trailing newline: 4 lines
]


def test_course_filters_match_the_notebook_on_real_text(tmp_path, real_texts, run_filter):
    texts = real_texts + TRICKY
    expected = [t for t in texts if paragraph_length_filter({"text": t})]
    after_length = len(expected)
    expected = [t for t in expected if paragraph_repetition_filter({"text": t})]
    kept, m = run_filter(
        tmp_path, texts, [{"type": "paragraph_length"}, {"type": "paragraph_repetition"}], batch_size=97, shard_size=700
    )
    assert kept == expected
    assert m["removed.paragraph_length"] == len(texts) - after_length
    assert m["removed.paragraph_repetition"] == after_length - len(expected)
    # the real data exercises both filters
    assert m["removed.paragraph_length"] > 100 and m["removed.paragraph_repetition"] > 10
    assert m["documents_out"] == len(expected)
