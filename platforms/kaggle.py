"""Kaggle notebooks and pushed kernels.

Layout inside Kaggle (``QWEN_KIT_KAGGLE_ROOT`` replaces ``/kaggle``, for tests):

- ``/kaggle/input`` — attached datasets and models, read-only. Mounts come in several shapes,
  so things are found by searching, never by fixed paths:
  ``/kaggle/input/<slug>/…``, ``/kaggle/input/datasets/<owner>/<slug>/…``,
  ``/kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>`` (older images:
  without ``models/``). A model folder holds ``config.json``, an adapter folder
  ``adapter_config.json``.
- ``/kaggle/working`` — writable and kept as the run's output (``chat_history.txt``, reports).

Detection: ``KAGGLE_KERNEL_RUN_TYPE`` (set by Kaggle) or an existing ``/kaggle/input``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from platforms.base import Platform

MAX_DEPTH = 8  # /kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>/<subfolder>
_SKIP = {".git", "__pycache__", ".ipynb_checkpoints"}


def kaggle_root() -> Path:
    return Path(os.environ.get("QWEN_KIT_KAGGLE_ROOT", "/kaggle"))


def _walk(root: Path, marker: str) -> list[Path]:
    """Folders under ``root`` (depth-limited) that contain ``marker``."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        if marker in files:
            found.append(here)
            dirs[:] = []  # a model's subfolders are not other models
        elif len(here.parts) - base_depth >= MAX_DEPTH:
            dirs[:] = []
    return found


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9.]+", text.lower()) if w and w != "."]


@dataclass(frozen=True)
class KagglePlatform(Platform):
    name: str = "kaggle"

    @classmethod
    def detect(cls) -> bool:
        return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "input").is_dir()

    @property
    def input_dir(self) -> Path:
        return kaggle_root() / "input"

    @property
    def working(self) -> Path:
        return kaggle_root() / "working"

    def model_dirs(self) -> list[Path]:
        return []  # models are found by :meth:`find_model`: mounts are too deep for name lookups

    def model_folders(self) -> list[Path]:
        """Every mounted folder with a ``config.json``."""
        return _walk(self.input_dir, "config.json")

    def adapter_folders(self) -> list[Path]:
        """Every mounted folder with an ``adapter_config.json`` (LoRA adapters)."""
        return _walk(self.input_dir, "adapter_config.json")

    def find_model(self, name: str) -> Path | None:
        """The mounted model folder whose path names ``name`` (case-insensitive): every word of
        the name's last part must appear in the folder's path below ``/kaggle/input``. For
        ``Qwen2.5-1.5B-Instruct`` that matches ``models/qwen-lm/qwen2.5/transformers/1.5b-instruct/1``.
        The closest match (fewest other words) wins."""
        wanted = _words(name.rstrip("/").split("/")[-1])
        if not wanted:
            return None
        best: tuple[int, str, Path] | None = None
        for folder in self.model_folders() + self.adapter_folders():
            words = _words(str(folder.relative_to(self.input_dir)))
            if all(w in words for w in wanted):
                extra = len(set(words) - set(wanted))
                if best is None or (extra, str(folder)) < best[:2]:
                    best = (extra, str(folder), folder)
        return best[2] if best else None

    def find_dataset(self, slug: str) -> Path | None:
        """The mount of an attached dataset ``owner/slug`` (or ``slug``)."""
        name = slug.rstrip("/").split("/")[-1]
        owner = slug.split("/")[0] if "/" in slug else None
        candidates = [self.input_dir / name]
        if owner:
            candidates.insert(0, self.input_dir / "datasets" / owner / name)
        candidates += sorted((self.input_dir / "datasets").glob(f"*/{name}")) if (self.input_dir / "datasets").is_dir() else []
        return next((c for c in candidates if c.is_dir()), None)

    def data_dirs(self) -> list[Path]:
        roots = [Path.cwd()]
        if self.input_dir.is_dir():
            roots += sorted(p for p in self.input_dir.iterdir() if p.is_dir() and p.name not in ("datasets", "models"))
            roots += sorted((self.input_dir / "datasets").glob("*/*"))
        return roots

    def output_dir(self) -> Path:
        return self.working / "output"

    def working_dir(self) -> Path:
        return self.working

    def tensorboard_dirs(self, run_root: Path, run_name: str) -> list[Path]:
        return [run_root / "tensorboard" / run_name]

    def prefers_4bit(self, n_params: float) -> bool:
        """T4s have 15 GB: models of 1.5B parameters and up load in 4-bit by default here."""
        return n_params >= 1.2e9

    def describe(self) -> str:
        return f"kaggle: inputs under {self.input_dir}, outputs in {self.working}"
