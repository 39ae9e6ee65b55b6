"""Dataset inputs, one way for every stage: load an input artifact of any
dataset kind (``dataset``, ``tokenized_dataset``, ``packed_dataset``,
``preference_dataset``) from disk as a DatasetDict, check its splits and
columns, and pick the split a stage works on; every failure is a StageError
that names the input slot and the path.

datasets is imported inside the functions: stage modules import this one and
must stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recipe_runner import DATASET, PACKED_DATASET, PREFERENCE_DATASET, TOKENIZED_DATASET, Artifact, StageError

#: the artifact kinds saved with ``DatasetDict.save_to_disk``
DATASET_KINDS = (DATASET, TOKENIZED_DATASET, PACKED_DATASET, PREFERENCE_DATASET)

#: the order of the well-known splits; others follow, sorted by name
SPLIT_ORDER = ("train", "validation", "test")


def ordered_splits(names: Iterable[str]) -> list[str]:
    """Split names in the order stages write and report them: train,
    validation, test, then the others sorted."""
    names = list(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(s for s in names if s not in SPLIT_ORDER)


def describe_input(art: Artifact, slot: str) -> str:
    """How messages name an input: ``input 'dataset': /path (tokenized_dataset)``."""
    return f"input {slot!r}: {art.path} ({art.kind})"


def load_dataset_dict(art: Artifact, slot: str = "dataset", *, require_split: str | None = None) -> Any:
    """The artifact bound to input ``slot`` as a ``datasets.DatasetDict``, its
    splits in :func:`ordered_splits` order.

    A bare ``Dataset`` saved on its own becomes the split "train".  A missing
    path, a directory ``load_from_disk`` cannot read, or (with
    ``require_split``) a missing split is a StageError naming the slot, the
    artifact's kind and its path."""
    from datasets import Dataset, DatasetDict, load_from_disk

    where = describe_input(art, slot)
    path = Path(art.path)
    if not path.exists():
        raise StageError(f"{where} does not exist")
    try:
        data = load_from_disk(str(path))
    except Exception as e:  # datasets raises many types; the user needs the path, not a traceback
        raise StageError(f"{where} cannot be read as a saved dataset: {type(e).__name__}: {e}") from e
    if isinstance(data, Dataset):
        data = DatasetDict({"train": data})
    data = DatasetDict({s: data[s] for s in ordered_splits(data.keys())})
    if require_split is not None and require_split not in data:
        raise StageError(f"{where} has no {require_split!r} split (splits: {list(data)})")
    return data


def require_column(dd: Any, column: str, slot: str, *, hint: str, text: bool = False) -> None:
    """Every split of ``dd`` (the input ``slot``) has ``column``, holding
    strings when ``text``; else a StageError listing the columns, ending
    with ``hint`` (what the user should do)."""
    for split, ds in dd.items():
        if column not in ds.column_names:
            raise StageError(
                f"the input {slot}'s split {split!r} has no column {column!r} (its columns: {ds.column_names}); {hint}"
            )
        if text and not _holds_text(ds, column):
            kind = ds.data.schema.field(column).type
            raise StageError(f"the input {slot}'s column {column!r} (split {split!r}) holds {kind}, not text; {hint}")


def pick_split(dd: Any, split: str | None, *, fallbacks: Sequence[str], where: str, hint: str = "") -> tuple[str, Any]:
    """``(name, Dataset)``: the split asked for, else the first non-empty one
    of ``fallbacks`` (e.g. ``("validation", "test")`` for a held-out measure,
    ``("validation", "train")`` where any data will do).  ``where`` names the
    input in the message; ``hint`` is appended to it when no fallback fits."""
    if split is not None:
        if split not in dd:
            raise StageError(f"{where} has no split {split!r} (splits: {list(dd)})")
        return split, dd[split]
    for name in fallbacks:
        if name in dd and len(dd[name]):
            return name, dd[name]
    wanted = " or ".join(repr(f) for f in fallbacks)
    raise StageError(f"{where} has no non-empty {wanted} split (splits: {list(dd)})" + (f"; {hint}" if hint else ""))


def _holds_text(ds: Any, column: str) -> bool:
    import pyarrow as pa

    kind = ds.data.schema.field(column).type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))
