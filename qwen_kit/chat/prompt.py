"""Turning a conversation into a prompt that fits the model's context.

A conversation is a system text (optional) plus whole *rounds* (one user message and
the reply to it). Trimming removes whole rounds, oldest first, never the system turn,
so the prompt plus the room left for the answer fits ``max_context`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from qwen_kit.errors import UserError


@dataclass
class Round:
    """One exchange: what the user said and what the assistant answered."""

    user: str
    assistant: str
    time: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


def build_messages(system: str | None, rounds: Sequence[Round], user_text: str | None) -> list[dict[str, str]]:
    """Chat-template messages: system (when given), each round, then the new user turn."""
    messages: list[dict[str, str]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    for r in rounds:
        if r.user:  # a persona's greeting is a round with only the assistant's side
            messages.append({"role": "user", "content": r.user})
        messages.append({"role": "assistant", "content": r.assistant})
    if user_text is not None:
        messages.append({"role": "user", "content": user_text})
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The prompt text the model sees, rendered with the tokenizer's own chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class ContextOverflow(UserError):
    """Even with every old round dropped, the prompt does not fit."""


def fit_rounds(tokenizer: Any, system: str | None, rounds: Sequence[Round], user_text: str,
               budget: int) -> tuple[int, str, int]:
    """Find the oldest round that can stay so the prompt has at most ``budget`` tokens.

    Returns ``(first_kept_index, prompt_text, prompt_tokens)``. The token count of the
    prompt only falls as older rounds are dropped, so a binary search needs
    O(log n) renders instead of one per round.

    Raises:
        ContextOverflow: the system text plus this user message alone exceed ``budget``.
    """

    def measure(start: int) -> tuple[str, int]:
        text = render_prompt(tokenizer, build_messages(system, rounds[start:], user_text))
        return text, count_tokens(tokenizer, text)

    text, n = measure(len(rounds))
    if n > budget:
        raise ContextOverflow(f"this message needs {n} prompt tokens but only {budget} fit "
                              "(--max-context minus --max-new-tokens); shorten it or raise --max-context")
    lo, hi = 0, len(rounds)  # invariant: start=hi fits
    best = (text, n)
    while lo < hi:
        mid = (lo + hi) // 2
        t, m = measure(mid)
        if m <= budget:
            hi, best = mid, (t, m)
        else:
            lo = mid + 1
    return hi, best[0], best[1]
