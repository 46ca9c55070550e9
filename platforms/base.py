"""The small interface every platform adapter implements.

An adapter only answers *where things are* and *how to launch*; it never trains,
loads or chats. Library code asks ``current_platform()`` for folders and stays
ignorant of which platform it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Platform:
    """Folders of one platform. Subclasses override :meth:`detect` and the folders."""

    name: str = "base"

    @classmethod
    def detect(cls) -> bool:
        """True when the current process runs on this platform."""
        return False

    def model_dirs(self) -> list[Path]:
        """Folders searched, in order, for a model given by name (``--model NAME``)."""
        return []

    def data_dirs(self) -> list[Path]:
        """Folders searched for data files given by bare name (``train.csv``)."""
        return [Path.cwd()]

    def output_dir(self) -> Path:
        """Where training runs, evaluation reports and exports are written."""
        return Path.cwd() / "output"

    def working_dir(self) -> Path:
        """A writable folder for the chat's own files (``chat_history.txt``)."""
        return Path.cwd()

    def cache_dir(self) -> Path:
        """qwen_kit's cache (converted demo weights, tokenized data)."""
        env = os.environ.get("QWEN_KIT_CACHE")
        if env:
            return Path(env).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg) if xdg else Path.home() / ".cache") / "qwen_kit"

    def tensorboard_dirs(self, run_root: Path, run_name: str) -> list[Path]:
        """Where a run's TensorBoard events go: ``<run_root>/tensorboard/<run_name>``, plus any
        folder the platform's own panel reads."""
        return [run_root / "tensorboard" / run_name]

    def find_model(self, name: str) -> Path | None:
        """A model folder for ``name`` found by searching (platforms whose mounts are too deep
        for :meth:`model_dirs`, like Kaggle's inputs); ``None`` when there is none."""
        return None

    def prefers_4bit(self, n_params: float) -> bool:
        """Whether a model of ``n_params`` parameters loads in 4-bit by default on a GPU here."""
        return False

    def env_defaults(self) -> dict[str, str]:
        """Environment variables to set (when unset) before any job starts, e.g. hub caches."""
        return {}

    def hub_download_env(self) -> dict[str, str]:
        """Extra environment for a hub download only (e.g. an academic proxy)."""
        return {}

    def webui_address(self) -> tuple[str, int]:
        """Where ``scripts/webui.py`` listens unless told otherwise: only this machine."""
        return "127.0.0.1", 7860

    def describe(self) -> str:
        return f"{self.name}: models in {', '.join(map(str, self.model_dirs())) or '-'}"
