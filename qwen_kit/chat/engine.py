"""The chat engine: one conversation, streamed token by token. The CLI and the web UI
both drive this class; neither generates text any other way."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from qwen_kit.chat.prompt import Round, build_messages, count_tokens, fit_rounds, render_prompt
from qwen_kit.errors import UserError
from qwen_kit.generation.base import GenerationFailed, TurnStats
from qwen_kit.generation.embedded import EmbeddedBackend
from qwen_kit.generation.sampling import GenerationSettings

__all__ = ["ChatEngine", "GenerationFailed", "GenerationSettings", "Turn", "TurnStats", "combine_contexts",
           "repeated_replies_left_out"]


_DONE = object()


class Turn:
    """One reply being generated. Either call :meth:`run` (generation in this thread,
    pieces handed to a callback: the fastest path, used by the terminal chat) or iterate
    the turn (generation in a worker thread, pieces yielded: for servers and UIs).
    Afterwards read :attr:`text`, :attr:`stats` and :attr:`extras`.

    Closing the iteration early (a web page's Stop button, a closed tab) stops generation at
    the next token and records the reply as far as it got."""

    def __init__(self, engine: "ChatEngine", user_text: str, prompt: str, prompt_tokens: int,
                 extras: dict[str, Any], messages: list[dict[str, str]] | None = None):
        self.engine, self.user_text, self.prompt = engine, user_text, prompt
        self.messages = messages or []  # what a remote backend is sent instead of the prompt text
        self.stop: list[str] = []  # stop strings (the API's "stop"): the reply ends before any of them
        self.stats = TurnStats(prompt_tokens=prompt_tokens)
        self.extras = extras
        self.text = ""
        self.stopped = threading.Event()  # set: generation ends at the next token

    def _generate(self, on_piece: Callable[[str], None]) -> None:
        engine = self.engine

        def collect(piece: str) -> None:
            self.text += piece
            on_piece(piece)

        backend = engine.backend if engine.backend is not None else engine.embedded_backend()
        try:
            self.stats.finish_reason = backend.generate(self.prompt, self.messages, engine.settings, self.stop,
                                                        self.stopped, collect, self.stats)
        except GenerationFailed:
            raise
        except Exception as err:
            raise GenerationFailed(f"generation failed: {type(err).__name__}: {err}") from err

    def _finish(self) -> None:
        self.engine._record(Round(self.user_text, self.text.strip(), time.time(), dict(self.extras)))

    def complete(self, text: str) -> None:
        """Record ``text`` as the reply without generating (scripted and replayed rounds)."""
        self.text = text
        self._finish()

    def run(self, on_piece: Callable[[str], None] | None = None) -> str:
        """Generate in the calling thread; ``on_piece`` gets each text piece. Returns the reply."""
        self._generate(on_piece or (lambda _piece: None))
        self._finish()
        return self.text

    def __iter__(self) -> Iterator[str]:
        pieces: queue.Queue = queue.Queue()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._generate(pieces.put)
            except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
                failure.append(err)
            finally:
                pieces.put(_DONE)  # always wake the consumer: a failed generation must not hang it

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        finished = False
        try:
            while (piece := pieces.get()) is not _DONE:
                yield piece
            finished = True
        finally:
            if not finished:  # the consumer stopped listening: stop the model too
                self.stopped.set()
                thread.join()
                self._finish()
        thread.join()
        if failure:
            raise failure[0]
        self._finish()


@dataclass
class ChatEngine:
    """A multi-turn conversation with one model.

    Args:
        model, tokenizer: as loaded by :func:`qwen_kit.model.load_model`.
        system: the system message; ``None`` lets the chat template choose its default.
        settings: sampling settings.
        max_context: prompt + new tokens never exceed this many tokens.
        eos_token_ids: every id that ends a reply.
        on_evict: called with the rounds that no longer fit, when they leave the prompt.
        on_round: called with each round as soon as it is complete (long-term memory writes it
            to disk then, so a killed process loses no answered turn).
        context_fn: called with ``(user_text, recent_rounds)``; returns extra system text
            for this turn (retrieved documents, memories) and extras for the turn record.
            :func:`combine_contexts` joins several sources into one.
    """

    model: Any
    tokenizer: Any
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    max_context: int = 4096
    eos_token_ids: list[int] = field(default_factory=list)
    on_evict: Callable[[list[Round]], None] | None = None
    on_round: Callable[[Round], None] | None = None
    context_fn: Callable[[str, list[Round]], tuple[str, dict[str, Any]]] | None = None
    context_placement: str = "system"  # or "user": retrieved text quoted before the question
    backend: Any = None  # None: this process's model, one reply at a time (qwen_kit.generation.backends)
    # rounds whose reply is word for word another round's reply stay in the history but not in
    # the prompt: a small model copies a repeated reply into every later answer (docs/memory.md)
    drop_repeated_replies: bool = True
    rounds: list[Round] = field(default_factory=list)
    window_start: int = 0  # rounds before this index have left the prompt for good

    def __post_init__(self) -> None:
        if not self.eos_token_ids and self.tokenizer.eos_token_id is not None:
            self.eos_token_ids = [self.tokenizer.eos_token_id]
        self.check_budget()

    @property
    def device(self) -> Any:
        return self.model.device

    @property
    def pad_token_id(self) -> int | None:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else None)

    def generate(self, **kwargs: Any) -> Any:
        return self.model.generate(**kwargs)

    def embedded_backend(self) -> EmbeddedBackend:
        """This process's model, one reply at a time (used when no ``backend`` is set)."""
        return EmbeddedBackend(self.model, self.tokenizer, self.eos_token_ids, self.pad_token_id,
                               generate_fn=self.generate)

    @property
    def budget(self) -> int:
        """Tokens the prompt may use: the context minus the room kept for the answer."""
        return self.max_context - self.settings.max_new_tokens

    def check_budget(self) -> None:
        """Refuse a context too small for the system prompt and the answer."""
        system_tokens = count_tokens(self.tokenizer, render_prompt(self.tokenizer, build_messages(self.system, [], "")))
        if system_tokens > self.budget:
            raise UserError(f"--max-context {self.max_context} leaves {max(self.budget, 0)} prompt tokens after "
                            f"--max-new-tokens {self.settings.max_new_tokens}, but the system prompt alone needs "
                            f"{system_tokens}; raise --max-context or shorten the system prompt")

    def start_turn(self, user_text: str) -> Turn:
        """Prepare the prompt for ``user_text`` (trimming old rounds) and return the Turn to stream."""
        for attempt in range(2):
            system, extras, message = self.system, {}, user_text
            if self.context_fn is not None:
                extra_text, extras = self.context_fn(user_text, self.rounds[self.window_start:])
                after = extras.pop("after_question", None)  # a source's last word, after the question
                if extra_text and self.context_placement == "user":
                    message = f"{extra_text}\n\nQuestion: {user_text}" + (f"\n{after}" if after else "")
                elif extra_text:
                    system = f"{system}\n\n{extra_text}" if system else extra_text
            window = self.rounds[self.window_start:]
            shown = repeated_replies_left_out(window) if self.drop_repeated_replies else list(range(len(window)))
            kept, prompt, n = fit_rounds(self.tokenizer, system, [window[i] for i in shown], message, self.budget)
            first = shown[kept] if kept < len(shown) else len(window)
            messages = build_messages(system, [window[i] for i in shown[kept:]], message)
            if not first:
                break
            self.window_start += first
            if self.on_evict is not None:
                self.on_evict(window[:first])
                # the rounds that just left may be what this message needs (long-term memory):
                # ask the context sources again now that they can find them
                if self.context_fn is not None and attempt == 0:
                    continue
            break
        return Turn(self, user_text, prompt, n, extras, messages)

    def reply(self, user_text: str) -> str:
        """Generate the whole reply at once (no streaming)."""
        return self.start_turn(user_text).run()

    def _record(self, r: Round) -> None:
        self.rounds.append(r)
        if self.on_round is not None:
            self.on_round(r)

    def release_window(self) -> int:
        """Let every round still in the prompt go through ``on_evict`` (end of a session, or a
        reset, with long-term memory on). Returns how many rounds left."""
        window = self.rounds[self.window_start:]
        self.window_start = len(self.rounds)
        if window and self.on_evict is not None:
            self.on_evict(window)
        return len(window)

    def reset(self) -> None:
        """Start a new conversation (the system prompt stays). Rounds in the prompt are
        handed to ``on_evict`` first, so long-term memory keeps them."""
        self.release_window()
        self.rounds.clear()
        self.window_start = 0

    def add_round(self, user_text: str, reply: str) -> Turn:
        """Record a scripted round without generating (evaluation replays, restored chats):
        the prompt is prepared as for a real turn, so trimming and eviction happen as usual."""
        turn = self.start_turn(user_text)
        turn.complete(reply)
        return turn

    def in_prompt(self) -> list[Round]:
        return self.rounds[self.window_start:]


def repeated_replies_left_out(rounds: list[Round]) -> list[int]:
    """Indices of the rounds to show: all but those whose (non-empty) reply appears more than once."""
    from collections import Counter

    counts = Counter(r.assistant.strip() for r in rounds if r.assistant.strip())
    return [i for i, r in enumerate(rounds) if counts.get(r.assistant.strip(), 0) < 2]


def combine_contexts(*sources: Callable[[str, list[Round]], tuple[str, dict[str, Any]]] | None):
    """One ``context_fn`` from several (persona lore, knowledge base, memories): texts joined
    by blank lines in the given order, extras merged."""
    active = [s for s in sources if s is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def context(user_text: str, recent: list[Round]) -> tuple[str, dict[str, Any]]:
        texts, extras = [], {}
        for source in active:
            text, more = source(user_text, recent)
            if text:
                texts.append(text)
            extras.update(more)
        return "\n\n".join(texts), extras

    return context
