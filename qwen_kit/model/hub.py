"""Talking to the model hub without ever hanging on a network timeout.

Offline boxes differ: some fail DNS at once, some let a lookup hang for a minute.
:func:`hub_reachable` bounds the whole check (DNS included) by a short timeout and
remembers the answer for the life of the process.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub URL in use: ``HF_ENDPOINT`` (e.g. the hf-mirror.com mirror) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def offline_forced() -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``)."""
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=None)
def hub_reachable(timeout: float | None = None) -> bool:
    """Whether the hub answers a TCP connect within ``timeout`` seconds (default 3,
    or ``QWEN_KIT_NET_TIMEOUT``). Never blocks longer than that."""
    if offline_forced():
        return False
    timeout = float(timeout or os.environ.get("QWEN_KIT_NET_TIMEOUT", 3))
    url = urlparse(hub_endpoint())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the probe runs in a daemon thread we can abandon.
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])
