"""Rendering conversations with the tokenizer's chat template, and the label masks.

``loss="response"`` trains only on assistant content plus its end token (``<|im_end|>``
for Qwen), so the model learns to answer and to stop; every other token is -100.
``loss="full"`` trains on every token. In both, the first token of a sequence is never
a target (nothing precedes it), which keeps packed and unpacked losses identical.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from qwen_kit.errors import UserError

IGNORE = -100
_SENTINEL = "\u0000QWEN_KIT_NO_SYSTEM\u0000"
_OPEN, _CLOSE = "<|im_start|>assistant\n", "<|im_end|>"


def _chatml_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each assistant reply plus its <|im_end|>, by plain substring search."""
    spans, pos = [], 0
    while (start := text.find(_OPEN, pos)) != -1:
        start += len(_OPEN)
        end = text.find(_CLOSE, start)
        if end == -1:
            break
        spans.append((start, end + len(_CLOSE)))
        pos = end
    return spans


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


class TemplateRenderer:
    """Renders messages with the tokenizer's chat template.

    ``apply_chat_template`` re-validates its inputs on every call; over 50k rows that
    doubles rendering time. When the template compiles in a plain sandboxed Jinja
    environment *and* gives byte-identical text on sample conversations, the compiled
    template is used directly; otherwise every call goes through ``apply_chat_template``.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._compiled = None
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
            env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
            env.globals["raise_exception"] = self._raise
            self._compiled = env.from_string(tokenizer.chat_template)
            self._extra = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        except Exception:  # any template our plain environment cannot compile: use the slow path
            self._compiled = None

    @staticmethod
    def _raise(message: str) -> None:
        raise ValueError(message)

    def _slow(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def verify(self, samples: list[list[dict]]) -> None:
        """Keep the fast path only if it matches ``apply_chat_template`` on ``samples``."""
        if self._compiled is None:
            return
        for msgs in samples:
            for gen in (False, True):
                try:
                    fast = self._compiled.render(messages=msgs, add_generation_prompt=gen, **self._extra)
                except Exception:
                    fast = None
                if fast != self._slow(msgs, gen):
                    self._compiled = None
                    return

    def __call__(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self._compiled is not None:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **self._extra)
        return self._slow(messages, add_generation_prompt)


def render_text(tokenizer: Any, messages: list[dict], no_system: bool, add_generation_prompt: bool = False,
                renderer: Any = None) -> str:
    """Render with the chat template. With ``no_system``, templates that inject a default
    system prompt (Qwen2.5's "You are Qwen, created by Alibaba Cloud…") are given a
    sentinel system message whose block is then cut out, so no system block remains."""
    render = renderer or (lambda m, g: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=g))
    if not no_system:
        return render(messages, add_generation_prompt)
    text = render([{"role": "system", "content": _SENTINEL}, *messages], add_generation_prompt)
    text = _SENTINEL_BLOCK.sub("", text, count=1)
    if _SENTINEL in text:
        raise UserError("this tokenizer's chat template cannot render a prompt without a system block; "
                        "drop --no-system-prompt or use a ChatML (Qwen) tokenizer")
    return text


_SENTINEL_BLOCK = re.compile(r"(<\|im_start\|>|<\|start_header_id\|>)?system\n?" + re.escape(_SENTINEL) +
                             r"(<\|im_end\|>|<\|eot_id\|>)?\n?")


def target_spans(tokenizer: Any, messages: list[dict], text: str, no_system: bool,
                 renderer: Any = None) -> list[tuple[int, int]]:
    """Character spans of ``text`` that are training targets in response-only loss:
    each assistant message's content and the end token that follows it."""
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    spans = _chatml_spans(text)
    if len(spans) == n_assistant:  # ChatML fast path: one scan over the rendered text
        return spans
    # Generic path: render the conversation up to each assistant turn.
    eos = tokenizer.eos_token or ""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render_text(tokenizer, messages[:i], no_system, add_generation_prompt=True, renderer=renderer)
        if not text.startswith(prefix):
            raise UserError("the chat template renders differently turn by turn, so response-only "
                            "labels cannot be located; use --loss full")
        start = len(prefix)
        end = start + len(m["content"])
        if text.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
    return spans


def labels_for_encoding(encoding: Any, ids: np.ndarray, spans: list[tuple[int, int]], loss: str) -> np.ndarray:
    """Labels from a ``tokenizers.Encoding``: native char->token lookups, no offset arrays."""
    if loss == "full":
        labels = ids.copy()
    else:
        labels = np.full(len(ids), IGNORE, dtype=np.int32)
        for s, e in spans:
            a = next((t for c in range(s, e) if (t := encoding.char_to_token(c)) is not None), None)
            b = next((t for c in range(e - 1, s - 1, -1) if (t := encoding.char_to_token(c)) is not None), None)
            if a is not None and b is not None:
                labels[a: b + 1] = ids[a: b + 1]
    if len(labels):
        labels[0] = IGNORE
    return labels


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
