"""What a document filter is.

A filter is one class, a subclass of :class:`DocumentFilter`, with its
options model (a subclass of :class:`FilterOptions`) beside it as the class
attribute ``Options``.  It is registered under its ``type`` in the
entry-point group ``recipe_runner.filters``; the built-in filters are
registered there by this project's pyproject exactly as a plugin's are::

    [project.entry-points."recipe_runner.filters"]
    has_word = "my_filters:HasWord"

A recipe then lists it as ``{type: has_word, word: love}``: the options are
validated with ``Options`` when the recipe is validated.  The filter is built
once per worker process with its options and called batch by batch; it
decides with :meth:`DocumentFilter.keep` (a list of texts in, one bool per
text out), or, for filters that work on whole Arrow arrays or give reasons or
edit the text, by overriding :meth:`DocumentFilter.decide`.  It judges each
document on its own: which documents share a batch depends on the stage's
run settings (``batch_size``, ``shard_size``, ``num_proc``), which must not
change what the stage writes.  Options naming a local file say so with
:meth:`FilterOptions.local_inputs`, so that the file's content is part of the
stage's key.

A filter module imports heavy libraries (numpy, pyarrow, datatrove, ...)
inside its methods: ``recipe validate`` loads the module to validate the
options and must stay fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: an option that is a fraction: from 0 to 1, finite
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
#: an option that is a ratio or a mean: from 0, finite
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class FilterOptions(BaseModel):
    """The options every filter has; a filter's ``Options`` adds its own (and
    may narrow ``type`` to a ``Literal`` of its registered name)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Label for this filter in the metrics (default: its type).")
    type: str = Field(description="The filter's name in the entry-point group 'recipe_runner.filters'.")

    #: ``(low, high)`` pairs of bounds among the options: low <= high where both are set
    ordered_bounds: ClassVar[tuple[tuple[str, str], ...]] = ()

    @model_validator(mode="after")
    def _check_ordered_bounds(self) -> FilterOptions:
        for low, high in self.ordered_bounds:
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{low} ({a}) is above {high} ({b}): no document could pass")
        return self

    def local_inputs(self) -> Mapping[str, Path]:
        """Local files or directories these options name (``{option: path}``,
        existing ones only): their content is part of the filter stage's key
        instead of their path.  None by default."""
        return {}


OptionsT = TypeVar("OptionsT", bound=FilterOptions)


@dataclass
class FilterDecision:
    """A filter's verdict on a batch of documents.

    ``keep``: one bool per document.  ``reasons``: per document, why it was
    removed ('' or None: no reason given), counted in the metrics as
    ``reasons.<filter>.<reason>``.  ``texts``: the documents' new texts (a
    pyarrow string array), for a filter that edits the documents it keeps."""

    keep: Any
    reasons: Any = None
    texts: Any = None


class DocumentFilter(Generic[OptionsT]):
    """Base class of filters (see the module documentation).

    Class attributes:

    - ``Options``: the options model, a subclass of :class:`FilterOptions`.
    - ``vectorised``: True for filters that work on whole Arrow batches, cheap
      per document: with ``num_proc: auto`` workers start only for large inputs.
    - ``edits_text``: True for filters that rewrite the documents they keep
      (their :meth:`decide` returns ``texts``).
    """

    Options: ClassVar[type[FilterOptions]] = FilterOptions
    vectorised: ClassVar[bool] = False
    edits_text: ClassVar[bool] = False

    def __init__(self, options: OptionsT):
        self.options = options

    def decide(self, texts: Any) -> FilterDecision:
        """The verdict on a batch (a pyarrow string array): by default
        :meth:`keep` on the texts as Python strings."""
        import numpy as np

        batch = texts.to_pylist()
        keep = np.asarray(list(self.keep(batch)), dtype=bool)
        if keep.shape != (len(batch),):
            raise ValueError(
                f"filter {self.options.type!r} returned {keep.shape[0] if keep.ndim else keep} decisions for "
                f"{len(batch)} documents"
            )
        return FilterDecision(keep)

    def keep(self, texts: list[str]) -> Iterable[bool]:
        """One bool per text: keep it?  Override this, or :meth:`decide`."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither keep() nor decide()")
