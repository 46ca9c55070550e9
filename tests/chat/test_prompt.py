"""Prompt rendering and history trimming, on the tiny model's real Qwen2.5 template."""

from __future__ import annotations

import pytest

from qwen_kit.chat.prompt import ContextOverflow, Round, build_messages, count_tokens, fit_rounds, render_prompt

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_three_round_conversation_renders_exact_chatml(tiny):
    rounds = [Round("Hi, I am Alice.", "Hello Alice!"), Round("我住在杭州。", "杭州很美。")]
    text = render_prompt(tiny.tokenizer, build_messages("Be brief.", rounds, "Where do I live?"))
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi, I am Alice.<|im_end|>\n"
        "<|im_start|>assistant\nHello Alice!<|im_end|>\n"
        "<|im_start|>user\n我住在杭州。<|im_end|>\n"
        "<|im_start|>assistant\n杭州很美。<|im_end|>\n"
        "<|im_start|>user\nWhere do I live?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_no_system_text_lets_qwen_template_inject_its_default(tiny):
    text = render_prompt(tiny.tokenizer, build_messages(None, [], "hello"))
    assert text.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n")


def _rounds(n: int) -> list[Round]:
    return [Round(f"question number {i} about the library", f"answer number {i}: it opens at nine") for i in range(n)]


@pytest.mark.parametrize("budget", [60, 90, 130, 200, 400, 10_000])
def test_trimming_keeps_newest_rounds_and_system_within_budget(tiny, budget):
    rounds = _rounds(12)
    first, text, n = fit_rounds(tiny.tokenizer, "SYSTEM-MARKER", rounds, "new question", budget)
    assert n <= budget and n == count_tokens(tiny.tokenizer, text)
    assert text.startswith("<|im_start|>system\nSYSTEM-MARKER")
    kept = rounds[first:]
    assert all(f"question number {r.user.split()[2]} " in text for r in kept)
    assert all(r.user + "<" not in text for r in rounds[:first])
    if first > 0:  # one more old round would not have fitted: trimming drops no more than needed
        more = render_prompt(tiny.tokenizer, build_messages("SYSTEM-MARKER", rounds[first - 1:], "new question"))
        assert count_tokens(tiny.tokenizer, more) > budget


def test_a_message_that_cannot_fit_is_refused(tiny):
    with pytest.raises(ContextOverflow, match="shorten it or raise --max-context"):
        fit_rounds(tiny.tokenizer, None, _rounds(2), "word " * 500, budget=100)
