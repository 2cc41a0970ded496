"""Loading pretrained text models and tokenizers from the Hugging Face hub without waiting on a missing network.

Order: a local folder or the user's cache first (``local_files_only=True``, instant); then the hub, but only when
offline mode is off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) and the hub answers a short connection probe,
so a machine without network gives up in about a second instead of retrying for half a minute.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

_TRUE = {"1", "on", "yes", "true"}
_PROBE_TIMEOUT_S = 1.5


def hub_offline() -> bool:
    """True when the environment asks Hugging Face libraries to stay offline."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable() -> bool:
    """One TCP connection attempt to the hub endpoint (``HF_ENDPOINT``), ``_PROBE_TIMEOUT_S`` at most.

    Behind a proxy a direct connection proves nothing, so then the hub counts as reachable.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def load_pretrained(loader: Any, name: str, accept: Callable[[Any], bool] = lambda _: True, **kwargs: Any) -> Any:
    """``loader.from_pretrained(name, **kwargs)`` from a local folder, the cache or the hub; None when unavailable.

    ``accept(result)`` rejects placeholders: transformers 5 returns a tokenizer holding only its special tokens
    when the vocabulary files are missing, instead of raising.
    """
    loader_name = getattr(loader, "__name__", repr(loader))
    try:  # transformers raises OSError, ValueError or (4.x tokenizers without files) TypeError here
        result = loader.from_pretrained(name, local_files_only=True, **kwargs)
        if accept(result):
            return result
    except Exception as error:  # any failure means "not available locally"; the caller falls back
        logger.debug("%s.from_pretrained(%r) found nothing locally: %s", loader_name, name, error)
    if hub_offline() or not hub_reachable():
        return None
    try:
        result = loader.from_pretrained(name, **kwargs)
    except Exception as error:
        logger.warning("could not download %r with %s: %s", name, loader_name, error)
        return None
    return result if accept(result) else None


def has_vocabulary(tokenizer: Any) -> bool:
    """True when a tokenizer knows more tokens than its special ones (its vocabulary file was found)."""
    return len(tokenizer) > len(set(tokenizer.all_special_tokens))
