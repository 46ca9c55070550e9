"""Platform adapters: where models, data and outputs live, and how jobs launch.

``current_platform()`` picks the adapter: ``QWEN_KIT_PLATFORM=<name>`` forces one,
otherwise the first adapter in ``ADAPTERS`` whose ``detect()`` is true wins
(``local`` always matches, so it comes last).
"""

from __future__ import annotations

import os

# The import name "platforms" is generic, and another distribution could install a package of
# that name; qwen_kit's entry points check this marker and name the conflict (qwen_kit.entry).
QWEN_KIT_ADAPTERS = True

from platforms.autodl import AutoDLPlatform
from platforms.base import Platform
from platforms.kaggle import KagglePlatform
from platforms.local import LocalPlatform

# Most specific first; local matches everywhere, so it is last.
ADAPTERS: list[type[Platform]] = [AutoDLPlatform, KagglePlatform, LocalPlatform]


def get_platform(name: str) -> Platform:
    """The adapter called ``name``; raises ``ValueError`` listing the known names."""
    for cls in ADAPTERS:
        if cls().name == name:
            return cls()
    known = ", ".join(cls().name for cls in ADAPTERS)
    raise ValueError(f"unknown platform {name!r}; known platforms: {known}")


def apply_env_defaults(platform: Platform | None = None) -> Platform:
    """Set the platform's environment defaults (hub caches on AutoDL's data disk, ...) where
    the user has not set them. Entry points call this before importing the hub libraries."""
    platform = platform or current_platform()
    for key, value in platform.env_defaults().items():
        os.environ.setdefault(key, value)
    return platform


def current_platform() -> Platform:
    """The adapter for the machine this process runs on."""
    forced = os.environ.get("QWEN_KIT_PLATFORM")
    if forced:
        return get_platform(forced)
    for cls in ADAPTERS:
        if cls.detect():
            return cls()
    return LocalPlatform()


__all__ = ["ADAPTERS", "AutoDLPlatform", "KagglePlatform", "LocalPlatform", "Platform", "apply_env_defaults", "current_platform",
           "get_platform"]
