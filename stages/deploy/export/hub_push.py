"""Pushing the export directory to the Hugging Face hub (``push_to_hub``),
after the shared hub check says the hub can be used now."""

from __future__ import annotations

import logging
from pathlib import Path

from recipe_runner import StageError

from ...common.hub import unavailable_reason
from .params import PushParams


def push_folder(folder: Path, push: PushParams, log: logging.Logger) -> str:
    """Upload ``folder`` to ``push.repo_id`` (created when missing); the commit
    URL.  Any failure is a StageError that says the export directory is kept."""
    why = unavailable_reason()
    if why is not None:
        raise StageError(
            f"export: push_to_hub to {push.repo_id!r} needs the Hugging Face hub, and {why}; "
            "the export directory is kept (drop push_to_hub to export only)"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(push.repo_id, private=push.private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=push.repo_id,
            repo_type="model",
            commit_message=push.commit_message,
            revision=push.revision,
        )
    except Exception as e:  # network, auth, permission errors come in many types
        raise StageError(
            f"export: push to {push.repo_id!r} failed ({type(e).__name__}: {str(e)[:300]}); the "
            "export directory is kept; log in with `huggingface-cli login` or set HF_TOKEN"
        ) from None
    url = str(getattr(info, "commit_url", "") or f"https://huggingface.co/{push.repo_id}")
    log.info("pushed to %s", url)
    return url
