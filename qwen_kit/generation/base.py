"""What every generation backend shares: the failure it raises, the figures it fills in, and
the stop-string filter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class GenerationFailed(RuntimeError):
    """The generation thread raised; the turn ends with this message instead of hanging."""


@dataclass
class TurnStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    stopped_at_eos: bool = False
    last_token_id: int | None = None
    finish_reason: str | None = None  # stop (end id or stop string), length, cancelled


class StopFilter:
    """Passes text pieces on, except a stop string and everything after it. Text that might be
    the start of a stop string is held back until the next piece decides."""

    def __init__(self, stops: list[str], on_piece: Callable[[str], None]):
        self.stops = [s for s in stops if s]
        self.on_piece = on_piece
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> None:
        if self.hit or not piece:
            return
        if not self.stops:
            self.on_piece(piece)
            return
        text = self.pending + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            self.pending = ""
            if cut:
                self.on_piece(text[:cut])
            return
        hold = max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:n])), default=0)
        emit, self.pending = (text[:-hold], text[-hold:]) if hold else (text, "")
        if emit:
            self.on_piece(emit)

    def flush(self) -> None:
        if self.pending and not self.hit:
            self.on_piece(self.pending)
        self.pending = ""
