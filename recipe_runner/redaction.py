"""Secrets never reach disk or the console: values a recipe takes from
environment variables that hold secrets are replaced by ``***`` wherever the
run writes or prints them (the stage that needs the value still gets it)."""

from __future__ import annotations

import logging
import re
from typing import Any

#: environment variable names whose values are secrets, whatever the recipe says
SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
REDACTED = "***"


def redact(value: Any, secrets: set[str] | frozenset[str]) -> Any:
    """``value`` with every secret replaced by ``***`` (strings, and inside dicts and lists)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


class RedactSecrets(logging.Filter):
    """Replaces secret values (from ``${env.X}`` of secret variables) in log records."""

    def __init__(self, secrets: frozenset[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for s in self.secrets:
                message = message.replace(s, REDACTED)
            record.msg, record.args = message, None
        return True
