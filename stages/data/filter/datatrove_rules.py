"""What the filters backed by datatrove's rule sets (Gopher quality and
repetition, C4, FineWeb) share: datatrove's filter called per document, and
an offline word/sentence splitter for its rules."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field

from recipe_runner import StageError

from .base import DocumentFilter, FilterDecision, FilterOptions
from .batch_words import BatchWords, plain_strings, split_batch, strip_characters

WordTokenizerName = Literal["simple", "spacy"]


class DatatroveRulesOptions(FilterOptions):
    """The option every datatrove-backed filter has."""

    word_tokenizer: WordTokenizerName = Field(
        "simple",
        description=(
            "Word/sentence splitter the rules count with: 'simple' (built in, offline: words are the "
            "whitespace-separated chunks, as in the Gopher paper, with surrounding punctuation stripped; sentences "
            "end at . ! ? or an ellipsis) or 'spacy' (datatrove's default, spaCy's blank English pipeline; needs "
            "the spacy package)."
        ),
    )


RulesOptionsT = TypeVar("RulesOptionsT", bound=DatatroveRulesOptions)


class DatatroveRulesFilter(DocumentFilter[RulesOptionsT]):
    """A datatrove filter called per document (``filter(Document)``); a
    subclass names the datatrove class in ``rules``."""

    rules: ClassVar[str] = ""  # the class name in datatrove.pipeline.filters

    def __init__(self, options: RulesOptionsT):
        super().__init__(options)
        from datatrove.data import Document
        from datatrove.pipeline import filters

        self._document = Document
        kwargs = self.rules_options(options.model_dump(exclude={"type", "name", "word_tokenizer"}))
        language = word_tokenizer(options.word_tokenizer)
        self._rules = getattr(filters, self.rules)(language=language, **kwargs)

    def rules_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The datatrove filter's keyword arguments, from the options' fields."""
        return options

    def decide(self, texts: Any) -> FilterDecision:
        if self.shares_words:
            texts = plain_strings(texts)
            return self.decide_with_words(texts, split_batch(texts))
        return self.decide_per_document(texts)

    @property
    def shares_words(self) -> bool:
        """Whether this filter decides on a whole batch's words (:meth:`decide_with_words`),
        which the filters of one list share: the ``simple`` splitter and rules of its own."""
        own_rules = type(self).batch_reasons is not DatatroveRulesFilter.batch_reasons
        return own_rules and self.options.word_tokenizer == "simple"

    def decide_with_words(self, texts: Any, words: BatchWords) -> FilterDecision:
        """The verdict on a batch whose words (``simple`` splitter) are ``words``."""
        reasons = self.batch_reasons(texts, words)
        return FilterDecision(keep=reasons == "", reasons=reasons)

    def batch_reasons(self, texts: Any, words: BatchWords) -> Any:
        """Why each text is dropped ('' when kept), for the whole batch: the
        datatrove rules reimplemented for the ``simple`` splitter (by the
        Gopher filters; the others call datatrove per document)."""
        raise NotImplementedError

    def decide_per_document(self, texts: Any) -> FilterDecision:
        """datatrove's own filter, called on each text."""
        import numpy as np
        import pyarrow as pa

        docs = [self._document(text=t, id=str(i)) for i, t in enumerate(texts.to_pylist())]
        keep = np.zeros(len(docs), dtype=bool)
        reasons = np.full(len(docs), "", dtype=object)
        for i, d in enumerate(docs):
            keep[i], reasons[i] = self._verdict(d)
        new = pa.array([d.text for d in docs], pa.string()) if self.edits_text else None
        return FilterDecision(keep=keep, reasons=reasons, texts=new)

    def verdict(self, text: str) -> tuple[bool, str]:
        """datatrove's own verdict on one text: (keep, reason)."""
        return self._verdict(self._document(text=text, id="0"))

    def _verdict(self, doc: Any) -> tuple[bool, str]:
        if not doc.text:
            return False, "empty"
        try:
            res = self._rules.filter(doc)
        except ZeroDivisionError:  # e.g. no words at all
            res = (False, "no_words")
        if isinstance(res, tuple):
            return bool(res[0]), res[1] or ""
        return bool(res), ""


def word_tokenizer(name: str) -> Any:
    """What datatrove's rules get as ``language``: the offline splitter for
    'simple', or 'en' (datatrove's spaCy pipeline) for 'spacy'."""
    if name == "simple":
        return _SimpleWordTokenizerFactory.get()
    try:
        import spacy  # noqa: F401 - only whether it is installed
    except ImportError as e:
        raise StageError(
            "word_tokenizer 'spacy' needs the spacy package (pip install spacy); or use word_tokenizer 'simple'"
        ) from e
    return "en"


class _SimpleWordTokenizerFactory:
    """Builds datatrove's WordTokenizer subclass lazily (datatrove is only
    imported when a datatrove-backed filter runs)."""

    _instance: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._instance is None:
            cls._instance = _simple_word_tokenizer_class()("en")
        return cls._instance


def _simple_word_tokenizer_class() -> Any:
    from datatrove.utils.word_tokenizers import WordTokenizer

    strip = strip_characters()
    sentences = re.compile(r"[^.!?…]*(?:[.!?…]+[\"'”’)\]]*|$)", re.S)

    class SimpleWordTokenizer(WordTokenizer):
        """Offline word/sentence splitter for datatrove's rules."""

        def word_tokenize(self, text: str) -> list[str]:
            return [chunk.strip(strip) or chunk for chunk in text.split()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in sentences.finditer(text) if text[m.start() : m.end()].strip()]

        def sent_tokenize(self, text: str) -> list[str]:
            return [text[a:b].strip() for a, b in self.span_tokenize(text)]

    return SimpleWordTokenizer
