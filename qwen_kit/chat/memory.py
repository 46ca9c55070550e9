"""Long-term memory: rounds that leave the prompt go to ``chat_history.txt`` and come back
when they are relevant.

The file is the source of truth. One round per line, JSON in UTF-8 (Chinese stays readable)::

    {"id": "5f0c…", "time": "2026-11-25 18:40:12", "session": "a1b2c3d4", "user": "alice",
     "user_text": "My cat is called Mochi.", "reply": "What a lovely name!"}

Durability: each append is one ``write`` of whole lines under an exclusive lock, then flush and
fsync; a process killed mid-write leaves at most one incomplete last line, which reading skips
with a warning (and the next append starts on a fresh line). ``forget`` rewrites the file
atomically (temporary file, fsync, rename) under the same lock; lines it cannot parse are kept
as they are, so no data is lost by a rewrite.

The search index (the knowledge base's hybrid retriever) is a cache next to the file, one per
user, updated from the file at start-up: only rounds it has not seen are embedded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from qwen_kit.chat.prompt import Round, count_tokens
from qwen_kit.errors import UserError
from qwen_kit.filelock import exclusive_lock
from qwen_kit.privacy import FILE_MODE, make_private, open_private, private_dir

FIELDS = ("id", "time", "session", "user", "user_text", "reply")
DEFAULT_FILE = "chat_history.txt"
HEADER = "From earlier conversations with the user (long-term memory):"


@dataclass
class MemoryRecord:
    id: str
    time: str
    session: str
    user: str
    user_text: str
    reply: str

    def line(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False) + "\n"

    def search_text(self) -> str:
        return f"{self.user_text}\n{self.reply}"


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``PATH.lock`` (a separate file: the data file itself is replaced by
    ``forget``, and a lock on a replaced file would protect nothing)."""
    return exclusive_lock(path.with_name(path.name + ".lock"), FILE_MODE)


class MemoryFile:
    """Reading, appending and rewriting the memory file."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise UserError(f"--memory-file {self.path} is a folder; give a file path such as "
                            f"{self.path / DEFAULT_FILE}")

    def read(self) -> tuple[list[MemoryRecord], list[str]]:
        """All valid records and one warning per line that was skipped."""
        if not self.path.exists():
            return [], []
        raw = self.path.read_bytes()
        records, warnings = [], []
        lines = raw.split(b"\n")
        complete_end = raw.endswith(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            last_incomplete = number == len(lines) and not complete_end
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in FIELDS):
                    raise ValueError("missing fields")
                records.append(MemoryRecord(**{k: row[k] for k in FIELDS}))
            except (ValueError, UnicodeDecodeError):
                why = ("incomplete last line (a write was interrupted)" if last_incomplete
                       else f"not a memory record (needs JSON with {', '.join(FIELDS)})")
                warnings.append(f"{self.path} line {number}: {why}; skipped, the file is left as it is")
        return records, warnings

    def append(self, records: Sequence[MemoryRecord]) -> None:
        if not records:
            return
        private_dir(self.path.parent)
        data = "".join(r.line() for r in records).encode("utf-8")
        with _locked(self.path):
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                size = os.fstat(fd).st_size
                if size:
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            data = b"\n" + data  # never glue a new record onto a torn line
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, ids: set[str]) -> int:
        """Delete the records with these ids (atomic rewrite). Returns how many were removed."""
        if not self.path.exists() or not ids:
            return 0
        with _locked(self.path):
            kept, removed = [], 0
            for line in self.path.read_bytes().splitlines(keepends=True):
                try:
                    row = json.loads(line.decode("utf-8"))
                    drop = isinstance(row, dict) and row.get("id") in ids
                except (ValueError, UnicodeDecodeError):
                    drop = False
                if drop:
                    removed += 1
                else:
                    kept.append(line if line.endswith(b"\n") else line + b"\n")
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
            try:
                os.chmod(tmp, stat.S_IMODE(os.stat(self.path).st_mode))  # the file keeps its mode
                with os.fdopen(fd, "wb") as f:
                    f.write(b"".join(kept))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            with contextlib.suppress(OSError):  # make the rename itself durable
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                os.fsync(dir_fd)
                os.close(dir_fd)
        return removed


FOLDER_NAME_MAX = 100  # bytes of readable name kept before a long name is cut and hashed


def index_folder_name(user: str) -> str:
    """The index folder of ``user``'s memories: letters, digits, ``_`` and ``-`` as they are,
    every other character percent-encoded (``alice/x`` -> ``alice%2fx``, ``..`` -> ``%2e%2e``),
    so no name climbs out of the index root and no two names share a folder. A name with
    capitals, or one too long for a file name, gets ``~`` and a hash of the whole name: on a
    case-insensitive disk ``Alice`` and ``alice`` stay apart (``~`` is never left unencoded)."""
    out = "".join(ch if (ch.isalnum() or ch in "_-") and ch.isprintable() else
                  "".join(f"%{b:02x}" for b in ch.encode("utf-8")) for ch in user)
    if out != out.lower() or len(out.encode("utf-8")) > FOLDER_NAME_MAX:
        head = out.encode("utf-8")[:FOLDER_NAME_MAX].decode("utf-8", "ignore")
        out = f"{head}~{hashlib.sha256(user.encode('utf-8')).hexdigest()[:12]}"
    return out


class LongTermMemory:
    """Overflowing rounds in, relevant memories out. Plugs into :class:`ChatEngine` as
    ``on_evict`` (:meth:`remember`) and as a context source (:meth:`__call__`)."""

    def __init__(self, path: str | Path, embedder: Any, tokenizer: Any, user: str = "default",
                 top_k: int = 3, max_tokens: int = 512, session: str | None = None, quiet: bool = False,
                 with_replies: bool = True):
        from qwen_kit.retrieval.hybrid import HybridRetriever, OtherEmbedder

        if not user.strip():
            raise UserError("--user must not be empty")
        self.file = MemoryFile(path)
        self.user, self.tokenizer, self.top_k, self.max_tokens = user, tokenizer, top_k, max_tokens
        self.with_replies = with_replies  # replies in the prompt too (scored 0.4 vs 0.3 without, docs/memory.md)
        self.session = session or uuid.uuid4().hex[:8]
        self.in_prompt: dict[int, str] = {}  # id(Round) -> record id: written, not yet searchable
        self.unsaved = 0  # rounds indexed since the index cache was last written
        self.index_dir = self.file.path.with_name(self.file.path.name + ".index") / index_folder_name(user)
        records, warnings = self.file.read()
        for w in warnings:
            print(f"qwen_kit: warning: {w}", file=sys.stderr)
        self.records = {r.id: r for r in records if r.user == user}
        self.retriever = None
        if (self.index_dir / "manifest.json").is_file():
            try:
                self.retriever = HybridRetriever.load(self.index_dir, embedder)
            except OtherEmbedder as err:  # two embedders' vectors are never mixed
                if not quiet:
                    print(f"qwen_kit: memory index {self.index_dir} was built with embedder {err.built_with}; "
                          f"indexing the memories again with {err.wanted}", file=sys.stderr)
            except (UserError, OSError, ValueError, KeyError):
                self.retriever = None  # a cache: rebuild it from the file
        if self.retriever is None:
            self.retriever = HybridRetriever(embedder)
        self._sync(quiet)

    # -- index upkeep -----------------------------------------------------------------------
    def _sync(self, quiet: bool) -> None:
        """Bring the index in line with the file: drop forgotten rounds, embed new ones."""
        indexed = set(self.retriever.file_hashes)
        gone = indexed - set(self.records)
        if gone:
            self.retriever.remove_files(gone)
        new = [r for r in self.records.values() if r.id not in indexed]
        self._index(new, progress=not quiet and len(new) > 64)
        if gone or new:
            self.save_index()

    def _index(self, records: Sequence[MemoryRecord], vectors: Any = None, progress: bool = False) -> None:
        from qwen_kit.retrieval.chunking import Chunk

        chunks = [Chunk(r.id, r.id, 0, "", r.search_text()) for r in records]
        self.retriever.add(chunks, vectors=vectors, progress=progress)
        for r in records:
            self.retriever.file_hashes[r.id] = r.time

    def save_index(self) -> None:
        """Write the index cache (losing it costs only re-embedding at the next start). It
        holds the conversations' text: private like the memory file."""
        with contextlib.suppress(OSError):
            private_dir(self.index_dir)
            self.retriever.save(self.index_dir)
            for f in self.index_dir.iterdir():
                make_private(f)
            self.unsaved = 0

    # -- engine hooks -----------------------------------------------------------------------
    def _record_for(self, r: Round) -> MemoryRecord:
        return MemoryRecord(uuid.uuid4().hex[:12], _timestamp(r.time), self.session, self.user, r.user, r.assistant)

    def record_round(self, r: Round) -> None:
        """Write a round to the file the moment it is complete (``on_round``): a crash, even
        ``kill -9``, loses no answered turn. It is not searchable while it is still in the
        prompt (recall would repeat what the model already sees); :meth:`remember` makes it so
        when it leaves. A later session reads it from the file like any other memory, so a
        restart never writes it twice."""
        if not r.user.strip():
            return
        record = self._record_for(r)
        self.file.append([record])
        self.records[record.id] = record
        self.in_prompt[id(r)] = record.id

    def remember(self, rounds: Sequence[Round], vectors: Any = None) -> list[MemoryRecord]:
        """Rounds that left the prompt become searchable; those not written yet (a caller
        without ``on_round``) are appended to the file first. ``vectors``: their embeddings
        when already computed (one row per kept round)."""
        records = []
        for r in rounds:
            if not r.user.strip():
                continue
            written = self.in_prompt.pop(id(r), None)
            if written is None:
                records.append(self._record_for(r))
            elif written in self.records:
                records.append(self.records[written])
            # else: forgotten (/forget) while it was still in the prompt: it stays gone
        new = [rec for rec in records if rec.id not in self.records]
        self.file.append(new)  # durable before it is searchable
        self.records.update((rec.id, rec) for rec in records)
        self._index(records, vectors)
        self.unsaved += len(records)
        return records

    def search(self, query: str, k: int | None = None) -> list[tuple[MemoryRecord, float]]:
        if not self.records or not query.strip():
            return []
        hits = self.retriever.search(query, k=k or self.top_k)
        return [(self.records[h.chunk.id], h.score) for h in hits if h.chunk.id in self.records]

    def __call__(self, user_text: str, recent: Sequence[Round]) -> tuple[str, dict[str, Any]]:
        # a round the prompt already holds is not recalled again (an API client sends its whole
        # history with each request; that history may hold rounds the memory also keeps)
        present = {(r.user.strip(), r.assistant.strip()) for r in recent}
        found = [(record, score) for record, score in self.search(user_text, self.top_k + len(present))
                 if (record.user_text.strip(), record.reply.strip()) not in present][:self.top_k]
        lines, used, picked = [], count_tokens(self.tokenizer, HEADER), []
        for record, score in found:  # best first: a long memory is shortened to what is left
            room = self.max_tokens - used
            if room < 16:
                break
            line = self._line(record, room)
            n = count_tokens(self.tokenizer, line)
            if used + n > self.max_tokens:
                continue
            lines.append(line)
            picked.append({"id": record.id, "time": record.time, "user_text": record.user_text,
                           "score": round(score, 6)})
            used += n
        if not lines:
            return "", {"memories": []}
        return HEADER + "\n" + "\n".join(lines), {"memories": picked}

    def _line(self, record: MemoryRecord, limit: int) -> str:
        """One memory for the prompt, at most about ``limit`` tokens: the reply is shortened
        first (the user's own words carry the facts), then the user's text."""
        said, reply = record.user_text, record.reply if self.with_replies else ""
        head = f"- [{record.time[:10]}] user: "
        line = head + said + (f"\n  you: {reply}" if reply else "")
        over = count_tokens(self.tokenizer, line) - limit
        if over > 0 and reply:
            reply = _clip(self.tokenizer, reply, count_tokens(self.tokenizer, reply) - over)
            line = head + said + (f"\n  you: {reply}" if reply else "")
            over = count_tokens(self.tokenizer, line) - limit
        if over > 0:
            line = head + _clip(self.tokenizer, said, count_tokens(self.tokenizer, said) - over)
        return line

    # -- user control -----------------------------------------------------------------------
    def listing(self, query: str = "", limit: int = 20) -> list[MemoryRecord]:
        if query.strip():
            return [r for r, _ in self.search(query, k=limit)]
        return list(self.records.values())[-limit:]

    def forget(self, target: str) -> int:
        """Delete one memory by id (a unique prefix works) or ``all`` of this user's."""
        target = target.strip()
        if not target:
            raise UserError("usage: /forget ID  or  /forget all")
        if target == "all":
            ids = set(self.records)
        else:
            ids = {i for i in self.records if i.startswith(target)}
            if len(ids) > 1:
                raise UserError(f"{target!r} matches {len(ids)} memories; give more of the id")
            if not ids:
                raise UserError(f"no memory with id {target!r}; /memories lists them")
        removed = self.file.remove(ids)
        for i in ids:
            self.records.pop(i, None)
        self.retriever.remove_files(ids)
        self.save_index()
        return removed


def _timestamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t or time.time()))


def _clip(tokenizer: Any, text: str, keep: int) -> str:
    """The first ``keep`` tokens of ``text`` (with "…" when cut); "" when nothing fits."""
    if keep <= 1:
        return ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= keep:
        return text
    return tokenizer.decode(ids[: keep - 1]).rstrip() + "…"
