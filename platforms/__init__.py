"""Platform adapters: where models, data and outputs live, and how jobs launch.

``current_platform()`` picks the adapter: ``QWEN_KIT_PLATFORM=<name>`` forces one,
otherwise the first adapter in ``ADAPTERS`` whose ``detect()`` is true wins
(``local`` always matches, so it comes last).
"""

from __future__ import annotations

import os

from platforms.base import Platform
from platforms.local import LocalPlatform

ADAPTERS: list[type[Platform]] = [LocalPlatform]


def get_platform(name: str) -> Platform:
    """The adapter called ``name``; raises ``ValueError`` listing the known names."""
    for cls in ADAPTERS:
        if cls().name == name:
            return cls()
    known = ", ".join(cls().name for cls in ADAPTERS)
    raise ValueError(f"unknown platform {name!r}; known platforms: {known}")


def current_platform() -> Platform:
    """The adapter for the machine this process runs on."""
    forced = os.environ.get("QWEN_KIT_PLATFORM")
    if forced:
        return get_platform(forced)
    for cls in ADAPTERS:
        if cls.detect():
            return cls()
    return LocalPlatform()


__all__ = ["ADAPTERS", "Platform", "LocalPlatform", "current_platform", "get_platform"]
