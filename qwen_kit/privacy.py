"""Files that hold a user's conversations are private: 0600 files in 0700 folders (POSIX).

Folders the kit creates get 0700; folders that exist are left alone. A file the kit creates
gets 0600; an existing file keeps its mode, and a group- or world-readable one is named once in
a one-line warning with the command that makes it private.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_warned: set[str] = set()


def private_dir(folder: Path) -> Path:
    """Create ``folder`` and any missing parents with mode 0700 (existing ones are untouched)."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        if os.name == "posix":
            os.chmod(d, DIR_MODE)  # mkdir's mode is masked by the umask
    return folder


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates the file 0600, and warns once about an existing shared file."""
    warn_if_shared(path)
    return os.open(path, flags, FILE_MODE)


def make_private(path: Path) -> None:
    """chmod a file the kit has just written to 0600 (a folder: 0700)."""
    if os.name == "posix":
        os.chmod(path, DIR_MODE if Path(path).is_dir() else FILE_MODE)


def warn_if_shared(path: Path) -> None:
    if os.name != "posix" or str(path) in _warned:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        _warned.add(str(path))
        print(f"qwen_kit: warning: {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
              f"make it private with: chmod 600 {path}", file=sys.stderr)


SECRET_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "QWEN_KIT_WEBUI_AUTH",
               "QWEN_KIT_API_KEYS", "OPENAI_API_KEY", "MODELSCOPE_API_TOKEN")


def redact(text: str) -> str:
    """``text`` with every secret this process holds (the variables above, each comma-separated
    part and each password of a USER:PASSWORD) and any credentials in a URL replaced by ***."""
    secrets = set()
    for name in SECRET_VARS:
        for part in (os.environ.get(name) or "").split(","):
            part = part.strip()
            if part:
                secrets.add(part)
                if ":" in part:
                    secrets.add(part.split(":", 1)[1])
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(?<=://)[^/\s:@]+:[^/\s@]+@", "***@", text)
