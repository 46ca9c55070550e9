"""Downloading and unpacking archives safely: HTTPS, timeouts, retries, resumable partial
files, sha256 checks, and extraction that refuses absolute paths, ``..`` and links.

A file is first written to ``NAME.part`` (resumed with an HTTP Range request after a broken
connection) and renamed only once complete and verified, so an interrupted or tampered
download never leaves a file that looks finished.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

from qwen_kit.errors import UserError

CHUNK = 1 << 20
ALLOW_HTTP_ENV = "QWEN_KIT_ALLOW_HTTP"  # "1": accept http:// URLs (a local mirror you trust)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_scheme(url: str, allow_http: bool) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and (allow_http or os.environ.get(ALLOW_HTTP_ENV) == "1"):
        return
    hint = f", or set {ALLOW_HTTP_ENV}=1 for a server you trust" if scheme == "http" else ""
    raise UserError(f"{url}: only https:// downloads are allowed (a plain connection can be altered on the way); "
                    f"use the https address{hint}")


class _RefuseDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to addresses :func:`_check_scheme` accepts: an https download must
    not be sent on to plain http by the server (or by whoever answers in its place)."""

    def __init__(self, allow_http: bool):
        super().__init__()
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        _check_scheme(urllib.parse.urljoin(req.full_url, newurl), self.allow_http)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(allow_http: bool = False) -> urllib.request.OpenerDirector:
    """urllib's opener, with redirects held to the same scheme rule as the first address."""
    return urllib.request.build_opener(_RefuseDowngrade(allow_http))


def _content_range(response) -> tuple[int, int | None] | None:
    """``Content-Range: bytes START-END/TOTAL`` (or ``bytes */TOTAL``) -> (START, TOTAL or None)."""
    value = response.headers.get("Content-Range", "")
    unit, _, rest = value.partition(" ")
    if unit.strip().lower() != "bytes" or "/" not in rest:
        return None
    span, _, total = rest.partition("/")
    try:
        first = int(span.split("-")[0]) if span.strip() != "*" else 0
        return first, int(total) if total.strip() != "*" else None
    except ValueError:
        return None


class _Incomplete(Exception):
    """The body ended before the length the server announced (a dropped connection)."""


def _receive(request: urllib.request.Request, part: Path, have: int, timeout: float,
             progress: Callable[[int], None] | None, allow_http: bool = False) -> None:
    """One request: append to (206) or rewrite (200) ``part``; raise ``_Incomplete`` unless the
    file then holds exactly the length the server announced (Content-Length / Content-Range)."""
    with opener(allow_http).open(request, timeout=timeout) as response:
        total: int | None = None
        length = response.headers.get("Content-Length")
        if have and response.status == 206:
            span = _content_range(response)
            if span is not None and span[0] != have:
                raise _Incomplete(f"the server resumed at byte {span[0]}, not {have}")
            total = span[1] if span and span[1] is not None else (have + int(length) if length else None)
        else:
            have = 0  # the server sent the whole file
            total = int(length) if length else None
        with open(part, "ab" if have else "wb") as f:
            # A chunked body (no Content-Length) that stops early raises http.client.IncompleteRead
            # here, holding what it did receive (kept, so the next attempt resumes after it); a
            # body with a length just ends, so the size is checked below.
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    if progress:
                        progress(len(block))
            except http.client.IncompleteRead as err:
                f.write(err.partial)
                raise
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"the connection ended after {size} of {total} bytes")


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0, retries: int = 3,
             progress: Callable[[int], None] | None = None, allow_http: bool = False) -> Path:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``), verify ``sha256`` when given.

    The received length is checked against the server's Content-Length / Content-Range; a body
    that stops early (a dropped connection, a chunked response cut off) is resumed with a Range
    request on the next attempt. ``dest`` appears only once the whole file is there.

    Args:
        allow_http: accept an ``http://`` URL (also with ``QWEN_KIT_ALLOW_HTTP=1``); otherwise
            only ``https://`` is fetched.

    Raises:
        UserError: a URL that is not https, the server kept failing or cutting the file short
            (the partial file is kept for the next run), or the file's checksum is not the recorded
            one (the partial file is deleted then, so a retry starts clean).
    """
    _check_scheme(url, allow_http)
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
            _receive(request, part, have, timeout, progress, allow_http)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:
                span = _content_range(err)
                if span is not None and span[1] == have:
                    break  # every byte is already here: verify and finish
                part.unlink()  # longer than the remote file, or the server won't say: start over
                last_error = "the partial file does not match the remote file; starting over"
            else:
                last_error = f"HTTP {err.code} {err.reason}"
        except http.client.IncompleteRead:
            last_error = f"the chunked response ended early ({part.stat().st_size} bytes received in all)"
        except _Incomplete as err:
            last_error = str(err)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as err:
            last_error = str(getattr(err, "reason", err)) or type(err).__name__
        if attempt == retries:
            kept = (f"the partial file {part} is kept and the next run resumes it" if part.exists()
                    else "run it again later")
            raise UserError(f"downloading {url} failed {retries} times (last: {last_error}); {kept}")
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
