"""The ``export`` stage's parameters."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from recipe_runner import Params

#: a shard size as transformers reads it: a whole number and a unit (KB/MB/GB are powers of 10, KiB/MiB/GiB of 2);
#: a lowercase b (which transformers reads as bits: '500Mb' is 62.5 MB) is refused
SHARD_SIZE = re.compile(r"([0-9]+)([kKMG]i?B)")


class PushParams(Params):
    repo_id: str = Field(..., description="hub repository, e.g. 'my-org/tinysolar-308m'")
    private: bool = Field(True, description="create the repository as private")
    commit_message: str = Field("Upload model exported by recipe-runner", description="commit message")
    revision: str | None = Field(None, description="branch to push to (default: main)")


class ExportParams(Params):
    max_shard_size: str = Field(
        "5GB",
        description="largest safetensors shard: a whole number and a unit, KB / MB / GB (powers of 10) or "
        "KiB / MiB / GiB (powers of 2), e.g. '2GB' or '500MB'",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the exported weights; 'auto' keeps the model's"
    )
    model_name: str | None = Field(None, description="title of the model card; default: the recipe name")
    license: str | None = Field(None, description="licence identifier for the card's metadata, e.g. apache-2.0")
    language: list[str] = Field(default_factory=list, description="languages for the card's metadata")
    tags: list[str] = Field(default_factory=list, description="extra tags for the card's metadata")
    model_card: bool = Field(True, description="write README.md with lineage and evaluation results")
    push_to_hub: PushParams | None = Field(
        None,
        description="push the exported directory to the hub ({repo_id, private}); needs network and a "
        "token (HF_TOKEN or `huggingface-cli login`)",
    )

    @field_validator("max_shard_size")
    @classmethod
    def _check_shard_size(cls, v: str) -> str:
        match = SHARD_SIZE.fullmatch(v)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(
                f"max_shard_size {v!r} is not a size: a whole number of at least 1 and a unit, e.g. '2GB', "
                "'500MB' or '4GiB'"
            )
        return v
