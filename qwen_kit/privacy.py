"""Files that hold a user's conversations are private: 0600 files in 0700 folders (POSIX).

Folders the kit creates get 0700; folders that exist are left alone. A file the kit creates
gets 0600; an existing file keeps its mode, and a group- or world-readable one is named once in
a one-line warning with the command that makes it private.
"""

from __future__ import annotations

import os
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
