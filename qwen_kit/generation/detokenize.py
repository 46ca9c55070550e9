"""Token ids to text as they are generated: the one detokenizer of every embedded backend.

A byte-level BPE (Qwen2.5's) splits a Chinese character or an emoji over several tokens; decoded
alone, the first of them is U+FFFD. The decoder holds text back until its characters are whole,
and decodes only a short window of recent ids per token (never the whole reply again): the
window starts at the last point where the text was whole, and the part already handed out is
cut off the window's text, so a tokenizer whose decoding depends on the token before (a
SentencePiece "▁" space) still decodes each piece in context.
"""

from __future__ import annotations

from typing import Any

_PARTIAL = "\ufffd"


class IncrementalDecoder:
    """Token ids in, new text out, never splitting a multi-byte character.

    ``add(id)`` returns the text that id completes ("" while a character is still partial);
    ``flush()`` returns what is left at the end (a cut-off character as U+FFFD, as
    ``tokenizer.decode`` shows it). Joined, the pieces equal ``tokenizer.decode(ids,
    skip_special_tokens=True)``.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._start = 0  # the window: ids[_start:] is decoded for each new id
        self._shown = 0  # ids[_start:_shown] are already handed out as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._start:self._shown])
        text = self._decode(self.ids[self._start:])
        if text.endswith(_PARTIAL) or len(text) <= len(before):
            return ""  # half a character (or nothing visible): wait for the rest
        self._start, self._shown = self._shown, len(self.ids)
        return text[len(before):]

    def flush(self) -> str:
        """At the end: whatever is still held back."""
        before = self._decode(self.ids[self._start:self._shown])
        text = self._decode(self.ids[self._start:])
        self._start = self._shown = len(self.ids)
        return text[len(before):]
