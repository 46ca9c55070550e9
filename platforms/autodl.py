"""AutoDL (autodl.com) GPU servers.

Layout on an AutoDL instance (``QWEN_KIT_AUTODL_ROOT`` replaces ``/root``, for tests):

- ``/root/autodl-tmp`` — the fast data disk: uploaded data (``train.csv``), ``models/``,
  ``output/`` and the hub caches (the system disk is small);
- ``/root/tf-logs`` — what the AutoDL panel's TensorBoard shows;
- ``/etc/network_turbo`` — a shell snippet that sets the academic proxy; it is applied only
  to hub downloads (``QWEN_KIT_AUTODL_TURBO`` points elsewhere, for tests).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from platforms.base import Platform

DETECT_VARS = ("AutoDLContainerUUID", "AutoDLDataCenter", "AutoDLRegion")


def _root() -> Path:
    return Path(os.environ.get("QWEN_KIT_AUTODL_ROOT", "/root"))


@dataclass(frozen=True)
class AutoDLPlatform(Platform):
    name: str = "autodl"

    @classmethod
    def detect(cls) -> bool:
        return any(os.environ.get(v) for v in DETECT_VARS) or (_root() / "autodl-tmp").is_dir()

    @property
    def data_disk(self) -> Path:
        return _root() / "autodl-tmp"

    def model_dirs(self) -> list[Path]:
        return [self.data_disk / "models", _root() / "autodl-fs" / "models", _root() / "autodl-pub" / "models"]

    def data_dirs(self) -> list[Path]:
        return [self.data_disk, self.data_disk / "data", Path.cwd()]

    def output_dir(self) -> Path:
        return self.data_disk / "output"

    def working_dir(self) -> Path:
        return self.data_disk

    def cache_dir(self) -> Path:
        env = os.environ.get("QWEN_KIT_CACHE")
        return Path(env).expanduser() if env else self.data_disk / "cache" / "qwen_kit"

    def tensorboard_dirs(self, run_root: Path, run_name: str) -> list[Path]:
        return [run_root / "tensorboard" / run_name, _root() / "tf-logs" / run_name]

    def webui_address(self) -> tuple[str, int]:
        """AutoDL forwards port 6006 of the instance as its "custom service" (自定义服务)."""
        return "0.0.0.0", 6006

    def env_defaults(self) -> dict[str, str]:
        cache = self.data_disk / "cache"
        return {"HF_HOME": str(cache / "huggingface"), "MODELSCOPE_CACHE": str(cache / "modelscope")}

    def hub_download_env(self) -> dict[str, str]:
        """The proxy variables that ``source /etc/network_turbo`` would export."""
        turbo = Path(os.environ.get("QWEN_KIT_AUTODL_TURBO", "/etc/network_turbo"))
        if not turbo.is_file():
            return {}
        text = turbo.read_text(encoding="utf-8", errors="replace")
        # Lines look like: export http_proxy=http://host:port && export https_proxy=http://host:port
        return {m.group(1): m.group(2)
                for m in re.finditer(r"export\s+([A-Za-z_]+)=[\"']?([^\"'\s&;]+)", text)
                if m.group(1).lower() in ("http_proxy", "https_proxy", "no_proxy")}
