"""Splitting documents into overlapping chunks at sentence ends (Chinese and English)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# A sentence ends after Chinese 。！？； (optionally a closing quote) or after . ! ? ; followed by space.
_SENTENCE_END = re.compile(r"(?<=[。！？；])[”’」』]?|(?<=[.!?;])(?=\s)|\n{2,}")
_HEADING = re.compile(r"^(#{1,6})\s+(.+)$")


@dataclass
class Chunk:
    id: str  # "<file>#<n>"
    file: str
    position: int  # 0-based chunk number within its file
    heading: str  # nearest heading above the chunk ("" when none)
    text: str


def split_sentences(text: str) -> list[str]:
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        if text[start:end].strip():
            parts.append(text[start:end].strip())
        start = end
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def chunk_document(file: str, text: str, count_tokens: Callable[[str], int], size: int = 200,
                   overlap: int = 40) -> list[Chunk]:
    """Chunks of at most ~``size`` tokens, each starting with up to ``overlap`` tokens of the
    previous one's last sentences, and remembering the nearest heading."""
    # (heading, sentence) units, so every chunk knows the section it came from
    units: list[tuple[str, str]] = []
    heading = ""
    for block in text.split("\n"):
        m = _HEADING.match(block.strip())
        if m:
            heading = m.group(2).strip()
            continue
        units += [(heading, s) for s in split_sentences(block)]
    chunks: list[Chunk] = []
    current: list[tuple[str, str, int]] = []  # (heading, sentence, tokens)
    used = 0

    def flush() -> None:
        body = " ".join(s for _, s, _ in current)
        if body.strip():
            n = len(chunks)
            chunks.append(Chunk(f"{file}#{n}", file, n, current[0][0], body))

    for head, sentence in units:
        n = count_tokens(sentence)
        if current and (used + n > size or head != current[-1][0]):
            flush()
            carry: list[tuple[str, str, int]] = []
            if head == current[-1][0]:  # overlap only within one section
                for item in reversed(current):
                    if sum(t for *_, t in carry) + item[2] > overlap:
                        break
                    carry.insert(0, item)
            current, used = carry, sum(t for *_, t in carry)
        current.append((head, sentence, n))
        used += n
    if current:
        flush()
    return chunks
