"""Downloading and unpacking archives safely: HTTPS, timeouts, retries, resumable partial
files, sha256 checks, and extraction that refuses absolute paths, ``..`` and links.

A file is first written to ``NAME.part`` (resumed with an HTTP Range request after a broken
connection) and renamed only once complete and verified, so an interrupted or tampered
download never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import stat
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from qwen_kit.errors import UserError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0, retries: int = 3,
             progress: Callable[[int], None] | None = None) -> Path:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``), verify ``sha256`` when given.

    Raises:
        UserError: the server kept failing, or the file's checksum is not the recorded one
            (the partial file is deleted then, so a retry starts clean).
    """
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = have and response.status == 206
                with open(part, "ab" if resumed else "wb") as f:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        if progress:
                            progress(len(block))
            break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            last_error = str(getattr(err, "reason", err))
            if attempt == retries:
                raise UserError(f"downloading {url} failed {retries} times (last: {last_error}); the partial file "
                                f"{part} is kept and the next run resumes it") from None
            print(f"qwen_kit: {url}: {last_error}; retrying ({attempt}/{retries})", file=sys.stderr)
            time.sleep(min(2 ** attempt, 30))
    got = sha256_of(part)
    if sha256 is not None and got != sha256:
        part.unlink()
        raise UserError(f"{url}: checksum mismatch (sha256 {got}, expected {sha256}); the download was deleted. "
                        "A mirror or a proxy changed the file: try again on another network, or report it")
    part.replace(dest)
    return dest


def _safe_target(root: Path, name: str) -> Path | None:
    """Where member ``name`` may go under ``root``; None for a name that would escape it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        return None
    target = (root / Path(*pure.parts)).resolve() if pure.parts else root
    return target if target == root or root in target.parents else None


def safe_extract(archive: Path, dest: Path, keep: Callable[[str], str | None] = lambda m: m) -> list[Path]:
    """Unpack a zip into ``dest``. ``keep`` maps a member name to the path to write it under
    (None: skip it). Absolute names, ``..``, drive letters and symbolic links are refused
    before anything is written.

    Raises:
        UserError: the archive holds such a member, or is not a zip file.
    """
    root = Path(dest).resolve()
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise UserError(f"{archive} is not a zip file (a broken download?); delete it and run again") from None
    with z:
        plan: list[tuple[zipfile.ZipInfo, Path]] = []
        for info in z.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UserError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to unpack it")
            if _safe_target(root, info.filename) is None:
                raise UserError(f"{archive}: member {info.filename!r} would be written outside {root}; "
                                "refusing to unpack this archive")
            name = keep(info.filename)
            if not name or info.is_dir():
                continue
            target = _safe_target(root, name)
            if target is None:
                raise UserError(f"{archive}: member {info.filename!r} maps outside {root}; refusing to unpack")
            plan.append((info, target))
        written = []
        for info, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as out:
                for block in iter(lambda: src.read(CHUNK), b""):
                    out.write(block)
            written.append(target)
    return written
