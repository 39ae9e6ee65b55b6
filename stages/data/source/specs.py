"""The options of one source of the ``source`` stage: local files
(:class:`FilesSource`) or a hub dataset (:class:`HubSource`), picked by
``type`` (or by the key 'path' / 'dataset')."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

#: documents a source or a mix may ask for: more is beyond what one process holds the sample indices of
MAX_DOCUMENTS = 10**10


class SourceOptions(BaseModel):
    """What every source has: its label, text column, size cap, share of the mix and kept columns."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        description="Label stored in the 'source' column and used in metrics (default: from the path or dataset name).",
    )
    text_column: str = Field(
        "text", description="Column holding the text in JSON/Parquet/CSV/hub data; it is renamed to 'text'."
    )
    max_chars: int | None = Field(
        None,
        ge=1,
        description=(
            "Skip (and count in the metric 'skipped_long_documents') documents longer than this many characters."
        ),
    )
    count: int | None = Field(
        None,
        ge=0,
        le=MAX_DOCUMENTS,
        description=(
            "Take exactly this many documents from this source (a seeded sample without replacement; "
            "a count above the number available repeats the source: whole passes plus a seeded sample; "
            "0 leaves the source out of the mix). At most 10**10."
        ),
    )
    weight: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Mixing weight: the source's share of the stage's 'total' documents. Either every source has a "
            "weight or none has; weights and counts are not mixed."
        ),
    )
    keep_columns: list[str] = Field(
        default_factory=list,
        description=(
            "Columns of JSON/Parquet/CSV/hub data kept next to 'text' and 'source' with their types (e.g. "
            "['url', 'id']); later stages carry them along. Where sources are mixed, a source without one "
            "of the kept columns gets nulls."
        ),
    )

    @field_validator("keep_columns")
    @classmethod
    def _check_keep(cls, v: list[str]) -> list[str]:
        reserved = {"text", "source"} & set(v)
        if reserved:
            raise ValueError(
                f"{sorted(reserved)} cannot be kept: 'text' and 'source' are the stage's own columns "
                "(the text column is chosen with 'text_column')"
            )
        if len(set(v)) != len(v):
            raise ValueError("keep_columns lists a column twice")
        return v


class FilesSource(SourceOptions):
    """Local files or fsspec URLs: one document per file (e.g. source code) or several per file."""

    type: Literal["files"] = Field("files", description="'files' (the default when 'path' is given).")
    path: str | list[str] = Field(
        ...,
        description=(
            "A file, a directory (combined with 'glob') or a glob pattern (e.g. 'data/**/*.jsonl'); "
            "or a list of them. Each may be an fsspec URL (s3://bucket/prefix/*.jsonl, gs://, hf://, https://, "
            "file://), read as a stream. Matches are read in sorted order."
        ),
    )
    glob: str | None = Field(
        None, description="Pattern applied inside each directory in 'path', e.g. '**/*.py' (default: every file)."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description=(
            "Glob patterns (matched against the path relative to its directory and the full path) of files to "
            "leave out, e.g. ['test/**', 'site-packages/**']."
        ),
    )
    format: Literal["auto", "text", "json", "parquet", "csv"] = Field(
        "auto",
        description=(
            "How to read the files. 'auto' goes by the extension (a trailing '.gz' is looked through): "
            ".jsonl/.json/.ndjson -> json, .parquet -> parquet, .csv/.tsv -> csv, anything else -> text "
            "(plain text and source code)."
        ),
    )
    split_by: Literal["file", "blank_lines", "lines", "separator", "regex"] = Field(
        "file",
        description=(
            "How text files are cut into documents: 'file' (the whole file is one document, as for "
            "source code), 'blank_lines' (paragraphs), 'lines', 'separator' (a literal string) or "
            "'regex' (a regular expression), both given in 'separator'. Pieces are stripped of "
            "surrounding blank lines and whitespace-only pieces are dropped."
        ),
    )
    separator: str | None = Field(
        None, description="The literal separator or the regular expression for split_by 'separator'/'regex'."
    )
    encoding: str = Field("utf-8", description="Text encoding of text files.")
    on_decode_error: Literal["skip", "error", "replace"] = Field(
        "skip",
        description=(
            "A text file that does not decode (or a corrupt .gz): 'skip' it (logged, counted in the "
            "metric 'skipped_undecodable_files'), stop with an 'error' naming the file, or 'replace' "
            "the bad bytes with U+FFFD."
        ),
    )

    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Options of the fsspec filesystem for entries of 'path' that are URLs (s3://, gs://, hf://, "
            "https://, file://), e.g. {endpoint_url: 'http://127.0.0.1:9000'} or {anon: true}. Credentials are "
            "not options: they come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN), so they never enter the stage's key."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> FilesSource:
        if self.split_by in ("separator", "regex") and not self.separator:
            raise ValueError(f"split_by {self.split_by!r} needs 'separator'")
        if self.split_by == "regex":
            try:
                re.compile(self.separator or "")
            except re.error as e:
                raise ValueError(f"invalid regular expression in 'separator': {e}") from e
        return self

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


#: storage option names that carry credentials (compared in lower case, at any depth)
SECRET_OPTIONS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_key",
        "secret_key",
        "account_key",
        "sas_token",
        "client_secret",
        "credentials",
    }
)


def credential_problems(sources: list[Any]) -> list[str]:
    """One message per 'files' source whose storage_options hold credentials
    (which would enter the stage's key and the manifest), naming the options,
    never their values (checked by the stage's ``cross_check``, whose messages
    do not echo the input as a field validator's would)."""
    out = []
    for i, spec in enumerate(sources):
        found = sorted(_secret_keys(spec.storage_options)) if isinstance(spec, FilesSource) else []
        if found:
            out.append(
                f"sources.{i}.storage_options: {found} hold credentials, which would enter the stage's key and "
                "the manifest: set them in the environment instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://, HF_TOKEN for hf://)"
            )
    return out


def _secret_keys(options: Any, prefix: str = "") -> set[str]:
    """The dotted names of credential options in a (nested) mapping of storage options."""
    found: set[str] = set()
    if isinstance(options, dict):
        for k, v in options.items():
            name = f"{prefix}{k}"
            if str(k).lower() in SECRET_OPTIONS:
                found.add(name)
            found |= _secret_keys(v, name + ".")
    return found


class HubSource(SourceOptions):
    """A dataset on the Hugging Face hub (needs network access or a local cache)."""

    type: Literal["hub"] = Field("hub", description="'hub' (the default when 'dataset' is given).")
    dataset: str = Field(..., description="Hub dataset name, e.g. 'upstage/Pretraining_Dataset'.")
    subset: str | None = Field(None, description="Configuration (subset) name.")
    split: str = Field("train", description="Split to read.")
    revision: str | None = Field(None, description="Git revision (branch, tag or commit) of the dataset repo.")
    streaming: bool = Field(False, description="Stream instead of downloading the whole split (use with 'take').")
    take: int | None = Field(None, ge=1, description="Read only the first N rows (from 1).")


def source_kind(v: Any) -> str:
    """The tag of a source mapping: its 'type', else 'hub' when it names a 'dataset', else 'files'."""
    if isinstance(v, dict):
        return v.get("type") or ("hub" if "dataset" in v else "files")
    return getattr(v, "type", "files")


SourceSpec = Annotated[
    Annotated[FilesSource, Tag("files")] | Annotated[HubSource, Tag("hub")],
    Discriminator(source_kind),
]
