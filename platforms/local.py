"""The laptop / plain-server adapter: folders relative to where you run the kit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platforms.base import Platform


def _env_paths(var: str) -> list[Path]:
    value = os.environ.get(var, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


@dataclass(frozen=True)
class LocalPlatform(Platform):
    name: str = "local"

    @classmethod
    def detect(cls) -> bool:
        return True  # the fallback: every machine is at least "local"

    def model_dirs(self) -> list[Path]:
        # QWEN_KIT_MODELS (os.pathsep-separated) first, then ./models.
        return _env_paths("QWEN_KIT_MODELS") + [Path.cwd() / "models"]

    def output_dir(self) -> Path:
        env = os.environ.get("QWEN_KIT_OUTPUT")
        return Path(env).expanduser() if env else Path.cwd() / "output"
