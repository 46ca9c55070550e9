"""The embedded backend: this process's model answers one reply at a time through
transformers' ``generate`` (the terminal chat; the fastest path for one person)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from qwen_kit.generation.base import GenerationFailed, StopFilter, TurnStats
from qwen_kit.generation.detokenize import IncrementalDecoder
from qwen_kit.generation.sampling import GenerationSettings


class _PieceStreamer:
    """Receives token ids from ``generate``, counts and times them, and hands decoded text
    pieces to ``on_piece`` (the same :class:`IncrementalDecoder` as the batched backend's)."""

    def __init__(self, tokenizer: Any, stats: TurnStats, start: float, on_piece: Callable[[str], None]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stats, self.start, self.on_piece = stats, start, on_piece
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if not self._seen_prompt:  # generate() first hands over the prompt ids
            self._seen_prompt = True
            return
        ids = value.reshape(-1).tolist()
        if ids:
            if self.stats.first_token_s is None:
                self.stats.first_token_s = time.perf_counter() - self.start
            self.stats.new_tokens += len(ids)
            self.stats.last_token_id = ids[-1]
        for token_id in ids:
            piece = self.decoder.add(token_id)
            if piece:
                self.on_piece(piece)

    def end(self) -> None:
        piece = self.decoder.flush()
        if piece:
            self.on_piece(piece)


def _stop_when(flag: threading.Event) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Flag(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Flag()])


class EmbeddedBackend:
    """``model.generate`` in the calling thread, pieces streamed through the kit's incremental
    detokenizer, sampled by :meth:`GenerationSettings.logits_processors` (the one rule every
    backend follows). ``generate_fn`` replaces ``model.generate`` (tests break it on purpose)."""

    name = "embedded"

    def __init__(self, model: Any, tokenizer: Any, eos_token_ids: list[int], pad_token_id: int | None,
                 generate_fn: Callable[..., Any] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids, self.pad_token_id = eos_token_ids, pad_token_id
        self.generate_fn = generate_fn or model.generate

    def generate(self, prompt: str, messages: list[dict[str, str]], settings: GenerationSettings, stop: list[str],
                 stopped: threading.Event, on_piece: Callable[[str], None], stats: TurnStats) -> str:
        import torch

        start = time.perf_counter()
        sink = StopFilter(stop, on_piece) if stop else None

        def until_stop(piece: str) -> None:
            sink.feed(piece)
            if sink.hit:  # the stop string arrived: the model stops at the next token
                stopped.set()

        streamer = _PieceStreamer(self.tokenizer, stats, start, until_stop if sink is not None else on_piece)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        kwargs = settings.generate_kwargs(inputs["input_ids"].shape[1])
        ends = [] if settings.ignore_eos else self.eos_token_ids  # [] is none, not the model's own
        try:
            with torch.inference_mode():
                self.generate_fn(**inputs, streamer=streamer, eos_token_id=ends, pad_token_id=self.pad_token_id,
                                 stopping_criteria=_stop_when(stopped), **kwargs)
        except Exception as err:
            raise GenerationFailed(f"generation failed: {type(err).__name__}: {err}") from err
        finally:
            stats.total_s = time.perf_counter() - start
        if sink is not None and not sink.hit:
            sink.flush()
        stats.stopped_at_eos = stats.last_token_id in ends
        return ("stop" if stats.stopped_at_eos or (sink is not None and sink.hit) else
                "cancelled" if stopped.is_set() else "length")
