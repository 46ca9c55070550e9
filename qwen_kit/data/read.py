"""Reading instruction data from files or the hub and turning each row into chat messages.

Accepted sources: ``.json`` (a list of rows), ``.jsonl``, ``.csv``, ``.parquet``, a folder
written by ``datasets.save_to_disk``, or a hub dataset id (``yahma/alpaca-cleaned``).
Accepted rows: alpaca (``instruction``, ``input``, ``output``), chat (``messages`` with
``role``/``content``) and sharegpt (``conversations`` with ``from``/``value``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from qwen_kit.errors import UserError

DEFAULT_HUB_DATASET = "yahma/alpaca-cleaned"
Message = dict[str, str]
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "bot": "assistant", "model": "assistant"}


@dataclass
class Example:
    """One training conversation and where it came from."""

    messages: list[Message]
    source: str
    row: int  # 1-based row (line for .jsonl/.csv, element for .json)


@dataclass
class ReadReport:
    total: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)

    def summary(self, source: str, limit: int = 5) -> str:
        shown = "; ".join(f"row {r}: {why}" for r, why in self.bad[:limit])
        more = f" (+{len(self.bad) - limit} more)" if len(self.bad) > limit else ""
        return f"{source}: skipped {len(self.bad)} of {self.total} rows — {shown}{more}"


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); "
                        "fix the file (is it truncated?) or save it as JSON Lines (.jsonl)") from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of rows, found an object with keys {sorted(data)[:5]}")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows, found {type(data).__name__}")
    yield from enumerate(data, start=1)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not valid UTF-8 (byte offset {err.start}); "
                        "re-save the file as UTF-8 (e.g. iconv -f GBK -t UTF-8)") from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, _BadRow(f"not valid JSON ({err.msg})")


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    for number, row in enumerate(reader, start=2):  # line 1 is the header
        yield number, row


def _read_table(rows: Any) -> Iterator[tuple[int, Any]]:
    for number, row in enumerate(rows, start=1):
        yield number, dict(row)


class _BadRow:
    def __init__(self, reason: str):
        self.reason = reason


def locate_data(source: str) -> Path:
    """A bare file name (``train.csv``) is also looked for in the platform's data folders."""
    path = Path(source).expanduser()
    if path.exists() or len(path.parts) != 1:
        return path
    from platforms import current_platform

    for folder in current_platform().data_dirs():
        if (folder / source).exists():
            return folder / source
    return path


def iter_rows(source: str) -> Iterator[tuple[int, Any]]:
    """Yield ``(row_number, row)`` from a file, a saved dataset folder or a hub dataset id."""
    path = locate_data(source)
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise UserError(f"{path} is a folder but not a saved dataset (no dataset_info.json); pass a data file")
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        yield from _read_table(ds["train"] if isinstance(ds, DatasetDict) else ds)
        return
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            yield from _read_json(path)
        elif suffix == ".jsonl":
            yield from _read_jsonl(path)
        elif suffix == ".csv":
            yield from _read_csv(path)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as err:  # pyarrow raises several types for a damaged file
                raise UserError(f"{path}: cannot read as Parquet ({err})") from None
            yield from _read_table(table.to_pylist())
        else:
            raise UserError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv or .parquet")
        return
    if "/" in source and not source.startswith((".", "/", "~")):
        yield from _read_table(_load_hub_dataset(source))
        return
    raise UserError(f"data file {path} does not exist; pass a .json/.jsonl/.csv/.parquet file, "
                    f"a saved dataset folder, or a hub dataset id such as {DEFAULT_HUB_DATASET}")


def _load_hub_dataset(name: str) -> Any:
    from qwen_kit.model.hub import hub_endpoint, hub_reachable

    from datasets import load_dataset

    try:
        return load_dataset(name, split="train", download_mode=None if hub_reachable() else "reuse_cache_if_exists")
    except Exception as err:  # datasets raises many types when offline or the id is wrong
        raise UserError(f"cannot load hub dataset {name} ({type(err).__name__}); it is not cached and "
                        f"{hub_endpoint()} did not serve it. Download it where you have network "
                        "(docs/training.md) and pass the file") from None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from CSV / pandas
        return None
    return value if isinstance(value, str) else str(value)


def row_to_messages(row: Any) -> list[Message]:
    """Convert one row to chat messages. Raises ``ValueError`` with the reason when it is unusable."""
    if isinstance(row, _BadRow):
        raise ValueError(row.reason)
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    if "messages" in row or "conversations" in row:
        turns = row.get("messages") or row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ValueError("'messages' is empty or not a list")
        messages: list[Message] = []
        for i, turn in enumerate(turns, start=1):
            if not isinstance(turn, dict):
                raise ValueError(f"turn {i} is not an object")
            role = turn.get("role", turn.get("from"))
            content = _text(turn.get("content", turn.get("value")))
            role = _SHAREGPT_ROLES.get(str(role).lower()) if role is not None else None
            if role is None:
                raise ValueError(f"turn {i} has an unknown or missing role")
            if not content or not content.strip():
                raise ValueError(f"turn {i} ({role}) has empty content")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("no assistant turn to learn from")
        return messages
    missing = [k for k in ("instruction", "output") if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)} (need instruction/input/output, "
                         "messages, or conversations)")
    instruction, inp, output = _text(row.get("instruction")), _text(row.get("input")) or "", _text(row.get("output"))
    if not instruction or not instruction.strip():
        raise ValueError("empty 'instruction'")
    if not output or not output.strip():
        raise ValueError("empty 'output'")
    prompt = f"{instruction.strip()}\n\n{inp.strip()}" if inp.strip() else instruction.strip()
    messages = []
    if _text(row.get("system")):
        messages.append({"role": "system", "content": _text(row["system"])})
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output.strip()}]


def read_examples(source: str, max_bad_share: float = 0.05) -> tuple[list[Example], ReadReport]:
    """Read and validate every row.

    Raises:
        UserError: the source cannot be read, has no usable rows, or more than
            ``max_bad_share`` of its rows are bad (the message shows the first ones).
    """
    examples: list[Example] = []
    report = ReadReport()
    for number, row in iter_rows(source):
        report.total += 1
        try:
            examples.append(Example(row_to_messages(row), source, number))
        except ValueError as err:
            report.bad.append((number, str(err)))
    if report.total == 0:
        raise UserError(f"{source}: no rows found; is the file empty?")
    share = len(report.bad) / report.total
    if not examples or share > max_bad_share:
        raise UserError(f"{report.summary(source, limit=3)}; that is {share:.0%} of rows, more than the "
                        f"{max_bad_share:.0%} allowed (--max-bad-share). Fix the rows or raise the limit")
    return examples, report
