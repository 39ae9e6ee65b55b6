"""Access to the Hugging Face hub, one policy for every stage: is the hub
offline, can it be reached from this machine, is a repository in the local
cache; and one style of message saying why a stage cannot use it.

A stage checks before it asks a library (datasets, transformers,
huggingface_hub) for something on the hub, so that a machine without network
fails at once with a message naming what it wanted and why, instead of after
the client's retries (about 50 s) with a traceback.  Every check is quick and
never hangs.  huggingface_hub is imported inside the functions: stage modules
import this one and must stay cheap to import.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

DEFAULT_ENDPOINT = "https://huggingface.co"

#: the switches with which a user says "this run must not use the hub"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

#: huggingface_hub's own spelling of a true environment value
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}

#: the probe's result per (host, port): a run asks several times, the answer does not change within it
_PROBED: dict[tuple[str, int], str | None] = {}


def offline_reason() -> str | None:
    """Why the hub is offline for this run, or None when it is not.

    The hub is offline when any of ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``
    or ``TRANSFORMERS_OFFLINE`` is true (``1``, ``on``, ``yes``, ``true``,
    huggingface_hub's spelling), or when huggingface_hub itself was put offline
    (its ``constants.HF_HUB_OFFLINE``, read from the environment when it was
    imported).  This merges two older rules: the data stages honoured the three
    variables but not huggingface_hub's constant, the model stages the constant
    and two of the variables.  The union is the correct one: each variable
    tells one library not to go online, and a user who sets any of them means
    this run must not reach the hub, so no stage should probe the network or
    start a download behind that user's back."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in _TRUE_VALUES:
            return f"the Hugging Face hub is offline ({name} is set)"
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers and datasets
        return None
    if constants.HF_HUB_OFFLINE:
        return "the Hugging Face hub is offline (huggingface_hub was put offline)"
    return None


def hub_offline() -> bool:
    """True when the hub must not be used in this run (see :func:`offline_reason`)."""
    return offline_reason() is not None


def hub_endpoint() -> str:
    """The hub URL the clients use: huggingface_hub's ``constants.ENDPOINT``
    (``HF_ENDPOINT`` when it was imported), else ``HF_ENDPOINT``."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    return str(constants.ENDPOINT)


def unreachable_reason(timeout: float = 5.0) -> str | None:
    """None when a TCP connection to the hub opens within ``timeout`` seconds,
    else why not.  Behind a proxy (``HTTPS_PROXY``, ``ALL_PROXY``, ... as
    urllib reads them, honouring ``NO_PROXY``) the proxy is what must answer.

    Two older probes are merged here: the data stages probed the endpoint of
    huggingface_hub's constants (the URL the clients really use) or the HTTPS
    proxy; the model stages read ``HF_ENDPOINT`` and skipped the probe behind
    any proxy.  This one keeps the first rule, the correct one: a dead proxy
    fails at once too.  The answer is kept per host for the process."""
    endpoint = hub_endpoint()
    url = urlparse(endpoint)
    host = url.hostname or ""
    proxy = _proxy_for(url.scheme or "https", host)
    target = urlparse(proxy) if proxy else url
    key = (target.hostname or "", target.port or (443 if target.scheme == "https" else 80))
    if key not in _PROBED:
        _PROBED[key] = _probe(*key, timeout=timeout)
    error = _PROBED[key]
    if error is None:
        return None
    via = f" via the proxy {proxy}" if proxy else ""
    return f"the Hugging Face hub is not reachable ({endpoint}{via}: {error})"


def hub_reachable(timeout: float = 5.0) -> bool:
    """True when a TCP connection to the hub (or its proxy) opens (see :func:`unreachable_reason`)."""
    return unreachable_reason(timeout) is None


def unavailable_reason(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be used now (offline, or not reachable), or None.
    The network is probed only when the hub is not offline."""
    return offline_reason() or unreachable_reason(timeout)


def in_hub_cache(
    repo_id: str,
    filenames: Sequence[str] = ("config.json", "tokenizer_config.json"),
    *,
    revision: str | None = None,
    repo_type: str = "model",
) -> bool:
    """True when one of ``filenames`` of ``repo_id`` is in the local Hugging
    Face cache (so a library can load it with the hub offline or out of reach)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision, repo_type=repo_type)
        except ValueError:  # not a valid repo id
            return False
        if isinstance(found, str):
            return True
    return False


def _proxy_for(scheme: str, host: str) -> str | None:
    if host and proxy_bypass(host):
        return None
    proxies = getproxies()
    return proxies.get(scheme) or proxies.get("all") or None


def _probe(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return str(e) or type(e).__name__
