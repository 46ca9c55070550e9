"""Downloading model weights into the platform's model folder.

Both routes run their hub's own command-line client as a subprocess, so platform-specific
network settings (AutoDL's academic proxy) reach that process only:

- ``modelscope``: ``modelscope download --model ID --local_dir DIR`` (fastest in mainland China);
- ``hf``: ``hf download ID --local-dir DIR`` from huggingface_hub (``HF_ENDPOINT`` picks a mirror).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from platforms import Platform, current_platform
from qwen_kit.errors import UserError


def download_command(repo_id: str, dest: Path, source: str) -> list[str]:
    if source == "modelscope":
        return ["modelscope", "download", "--model", repo_id, "--local_dir", str(dest)]
    if source == "hf":
        return ["hf", "download", repo_id, "--local-dir", str(dest)]
    raise UserError(f"--source must be modelscope or hf, got {source!r}")


def download_model(repo_id: str, source: str = "auto", dest_root: str | None = None,
                   platform: Platform | None = None) -> Path:
    """Download ``repo_id`` (e.g. ``Qwen/Qwen2.5-1.5B-Instruct``) to ``<model dir>/<name>``.

    ``source="auto"`` uses ModelScope when its client is installed, else the HF client.
    Returns the folder; raises :class:`UserError` when the client is missing or fails.
    """
    platform = platform or current_platform()
    if "/" not in repo_id:
        raise UserError(f"model id {repo_id!r} should look like Qwen/Qwen2.5-1.5B-Instruct")
    if source == "auto":
        source = "modelscope" if shutil.which("modelscope") else "hf"
    root = Path(dest_root).expanduser() if dest_root else platform.model_dirs()[0]
    dest = root / repo_id.split("/")[-1]
    cmd = download_command(repo_id, dest, source)
    if shutil.which(cmd[0]) is None:
        hint = "pip install modelscope" if source == "modelscope" else "pip install -U huggingface_hub"
        raise UserError(f"the {cmd[0]} command is not installed; {hint}, or use --source "
                        f"{'hf' if source == 'modelscope' else 'modelscope'}")
    env = {**os.environ, **platform.hub_download_env()}  # e.g. AutoDL's proxy, for this process only
    dest.mkdir(parents=True, exist_ok=True)
    print(f"downloading {repo_id} from {source} into {dest}", file=sys.stderr)
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise UserError(f"{' '.join(cmd[:2])} failed with exit code {result.returncode}; see its messages above")
    if not (dest / "config.json").is_file():
        raise UserError(f"the download finished but {dest} has no config.json; is {repo_id} a model id?")
    return dest
