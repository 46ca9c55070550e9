"""Rendering conversations with the tokenizer's chat template, and the label masks.

``loss="response"`` trains only on assistant content plus its end token (``<|im_end|>``
for Qwen), so the model learns to answer and to stop; every other token is -100.
``loss="full"`` trains on every token. In both, the first token of a sequence is never
a target (nothing precedes it), which keeps packed and unpacked losses identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from qwen_kit.errors import UserError

IGNORE = -100
_SENTINEL = "\u0000QWEN_KIT_NO_SYSTEM\u0000"
_CHATML_ASSISTANT = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.DOTALL)


@dataclass(frozen=True)
class RenderOptions:
    """How rows become token ids and labels.

    Attributes:
        loss: ``response`` or ``full``.
        system_prompt: system message for rows that have none (``None``: the template's own).
        no_system_prompt: render with no system block at all (drops rows' own system messages too).
        max_len: longest sequence in tokens.
        too_long: ``truncate`` (keep the first ``max_len`` tokens) or ``drop`` the row.
    """

    loss: str = "response"
    system_prompt: str | None = None
    no_system_prompt: bool = False
    max_len: int = 2048
    too_long: str = "truncate"

    def __post_init__(self) -> None:
        if self.loss not in ("response", "full"):
            raise UserError(f"--loss must be 'response' or 'full', got {self.loss!r}")
        if self.too_long not in ("truncate", "drop"):
            raise UserError(f"--too-long must be 'truncate' or 'drop', got {self.too_long!r}")
        if self.no_system_prompt and self.system_prompt:
            raise UserError("--system-prompt and --no-system-prompt contradict each other; pick one")
        if self.max_len < 8:
            raise UserError(f"--max-len must be at least 8 tokens, got {self.max_len}")


def apply_system(messages: Sequence[dict], opts: RenderOptions) -> list[dict]:
    """The messages to render, with the system choice applied."""
    msgs = [dict(m) for m in messages]
    if opts.no_system_prompt:
        return [m for m in msgs if m["role"] != "system"]
    if opts.system_prompt is not None and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": opts.system_prompt})
    return msgs


def render_text(tokenizer: Any, messages: list[dict], no_system: bool, add_generation_prompt: bool = False) -> str:
    """Render with the chat template. With ``no_system``, templates that inject a default
    system prompt (Qwen2.5's "You are Qwen, created by Alibaba Cloud…") are given a
    sentinel system message whose block is then cut out, so no system block remains."""
    if not no_system:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = tokenizer.apply_chat_template([{"role": "system", "content": _SENTINEL}, *messages], tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    block = re.compile(r"(<\|im_start\|>|<\|start_header_id\|>)?system\n?" + re.escape(_SENTINEL) +
                       r"(<\|im_end\|>|<\|eot_id\|>)?\n?")
    text = block.sub("", text, count=1)
    if _SENTINEL in text:
        raise UserError("this tokenizer's chat template cannot render a prompt without a system block; "
                        "drop --no-system-prompt or use a ChatML (Qwen) tokenizer")
    return text


def target_spans(tokenizer: Any, messages: list[dict], text: str, no_system: bool) -> list[tuple[int, int]]:
    """Character spans of ``text`` that are training targets in response-only loss:
    each assistant message's content and the end token that follows it."""
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    spans = [(m.start(1), m.end(1)) for m in _CHATML_ASSISTANT.finditer(text)]
    if len(spans) == n_assistant:  # ChatML fast path: one regex over the rendered text
        return spans
    # Generic path: render the conversation up to each assistant turn.
    eos = tokenizer.eos_token or ""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render_text(tokenizer, messages[:i], no_system, add_generation_prompt=True)
        if not text.startswith(prefix):
            raise UserError("the chat template renders differently turn by turn, so response-only "
                            "labels cannot be located; use --loss full")
        start = len(prefix)
        end = start + len(m["content"])
        if text.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
    return spans


def labels_from_offsets(offsets: np.ndarray, spans: list[tuple[int, int]], loss: str) -> np.ndarray:
    """Token-level targets: a token is a target when it starts inside a target span."""
    n = len(offsets)
    if loss == "full":
        mask = np.ones(n, dtype=bool)
    else:
        starts = offsets[:, 0]
        mask = np.zeros(n, dtype=bool)
        for s, e in spans:
            mask |= (starts >= s) & (starts < e)
    if n:
        mask[0] = False
    return mask
