"""Reading JSON Lines files that users write (QA sets, dialogues, probes, question banks): every
problem is a UserError naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from qwen_kit.errors import UserError


def read_jsonl(path: str | Path, kind: str, check: Callable[[dict[str, Any]], str | None] | None = None,
               errors: str = "strict") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each non-blank line. ``check(row)`` returns a problem (``"needs
    'user'"``) or None; ``errors="ignore"`` drops undecodable bytes, as OpenCompass does for its
    own files."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{kind} file {p} does not exist")
    rows = []
    text = p.read_bytes().decode("utf-8-sig", errors=errors) if errors != "strict" else _utf8(p)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{p}: line {number} is not valid JSON ({err.msg}); fix that line") from None
        problem = "must be a JSON object" if not isinstance(row, dict) else check(row) if check else None
        if problem:
            raise UserError(f"{p}: line {number} {problem}")
        rows.append((number, row))
    return rows


def _utf8(p: Path) -> str:
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = p.read_bytes()[: err.start].count(b"\n") + 1
        raise UserError(f"{p}: line {line} is not valid UTF-8; save the file as UTF-8") from None

