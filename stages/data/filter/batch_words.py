"""The ``simple`` word splitter of the datatrove-backed filters, run on a
whole Arrow batch at once: the words of every document as integer ids, with
their lengths, for the vectorised Gopher rules.

A word is a chunk of ``str.split()`` with the punctuation around it stripped,
or the chunk itself when nothing is left (exactly
:func:`.datatrove_rules.word_tokenizer`'s ``simple``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any


@cache
def strip_characters() -> str:
    """What the ``simple`` splitter strips around a chunk."""
    from datatrove.utils.text import PUNCTUATION

    return PUNCTUATION + "\"'“”‘’"


@dataclass
class BatchWords:
    """The words of a batch of documents, flat, in document order.

    ``ids``: each word's index in ``vocab`` (a pyarrow string array, in order
    of first occurrence); ``lengths``: its characters (code points);
    ``doc_starts``: where each document's words start (one more entry than
    documents, the last one the number of words)."""

    ids: Any
    lengths: Any
    doc_starts: Any
    vocab: Any
    _doc_strings: dict[int, str] = field(default_factory=dict, repr=False)
    #: what the rules derive from the words, kept for the next rule or filter (by name)
    derived: dict[str, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def per_doc(self) -> Any:
        """Words per document."""
        import numpy as np

        return np.diff(self.doc_starts)

    @cached_property
    def doc_of_word(self) -> Any:
        """The document of each word."""
        import numpy as np

        return np.repeat(np.arange(len(self.doc_starts) - 1), self.per_doc)

    @cached_property
    def char_starts(self) -> Any:
        """Where each word starts in the batch's words, concatenated (one more entry than words)."""
        import numpy as np

        return np.concatenate(([0], np.cumsum(self.lengths)))

    def take(self, keep: Any) -> BatchWords:
        """The words of the documents ``keep`` (a bool per document) selects."""
        import numpy as np

        counts = self.per_doc[keep]
        mask = np.repeat(keep, self.per_doc)
        starts = np.concatenate(([0], np.cumsum(counts)))
        return BatchWords(self.ids[mask], self.lengths[mask], starts, self.vocab)

    @cached_property
    def vocab_list(self) -> list[str]:
        """``vocab`` as Python strings."""
        return list(self.vocab.to_pylist())

    def doc_string(self, doc: int) -> str:
        """The words of document ``doc``, concatenated."""
        if doc not in self._doc_strings:
            vocab = self.vocab_list
            ids = self.ids[self.doc_starts[doc] : self.doc_starts[doc + 1]].tolist()
            self._doc_strings[doc] = "".join([vocab[k] for k in ids])
        return self._doc_strings[doc]


def plain_strings(texts: Any) -> Any:
    """``texts`` as a pyarrow string array without nulls (null: '')."""
    import pyarrow as pa

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.type != pa.string():
        texts = texts.cast(pa.string())
    return texts.fill_null("") if texts.null_count else texts


def split_batch(texts: Any) -> BatchWords:
    """The words of each text of ``texts`` (a pyarrow string array without nulls: :func:`plain_strings`)."""
    import numpy as np
    import pyarrow.compute as pc

    chunk_lists = pc.utf8_split_whitespace(texts)  # as str.split(), with '' at the ends
    flat = pc.list_flatten(chunk_lists)
    non_empty = pc.greater(pc.binary_length(flat), 0)
    chunks = pc.filter(flat, non_empty)
    per_list = pc.list_value_length(chunk_lists).to_numpy(zero_copy_only=False).astype(np.int64)
    mask = non_empty.to_numpy(zero_copy_only=False)
    flags = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    doc_starts = flags[np.concatenate(([0], np.cumsum(per_list)))]
    stripped = pc.utf8_trim(chunks, characters=strip_characters())
    words = pc.if_else(pc.equal(pc.binary_length(stripped), 0), chunks, stripped)
    encoded = pc.dictionary_encode(words)
    ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.utf8_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    return BatchWords(ids, lengths, doc_starts, encoded.dictionary)


def concatenated(strings: Any) -> str:
    """The strings of a pyarrow string array (no nulls), concatenated."""
    import numpy as np

    start = strings.offset
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[start : start + len(strings) + 1]
    if len(offsets) < 2:
        return ""
    return strings.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]].decode("utf-8")
