"""The real-path evaluations replay a set through the chat that chat.py builds, with nothing
taken back: every turn, probes included, stays in the conversation."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_kit.chat.pipeline import ChatConfig, open_knowledge
from qwen_kit.chat.evaluate import real_path_memory, real_path_persona, real_path_rag

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedder():
    from qwen_kit.retrieval.hybrid import Embedder

    return Embedder(None)


def test_rag_real_path_counts_gold_sources_and_languages(tiny, embedder):
    cfg = ChatConfig(greedy=True, max_new_tokens=4)
    qa = [{"question": "What is the name of the campus Wi-Fi network?", "answers": ["Linden-Secure"], "doc": "it_help.md"},
          {"question": "校园卡单次最多能充值多少？", "answers": ["五百"], "doc": "校园卡.md"},
          {"question": "When does the library close?", "answers": ["10 pm"], "doc": "nowhere.md"}]
    result = real_path_rag(cfg, tiny, open_knowledge([str(ROOT / "data/knowledge")], embedder, cfg), qa, progress=False)
    assert result.asked == 3 and result.found == 2  # nowhere.md is never a source
    assert set(result.by_language) == {"en", "zh"} and result.by_language["en"][0] == 2
    assert [d["gold"] for d in result.details] == ["it_help.md", "校园卡.md", "nowhere.md"]
    row = result.row("gold retrieved")
    assert row["gold retrieved"] == pytest.approx(2 / 3) and row["en: right, with gold retrieved"].endswith("/2")


def test_memory_real_path_keeps_probes_in_the_conversation(tiny, embedder):
    dialogue = [{"user": f"Remember: my locker number at the swimming pool on the east side of town is {n}7{n}.",
                 "assistant": "Noted, I will keep that locker number in mind for you."} for n in range(1, 10)]
    dialogue += [{"user": "Tell me something nice."},
                 {"user": "What was my locker number with 1s?", "expect": ["171"]},
                 {"user": "And the one with 2s?", "expect": ["272"]}]
    cfg = ChatConfig(greedy=True, max_new_tokens=8, max_context=420)  # memories get a quarter of the prompt
    result = real_path_memory(cfg, tiny, embedder, dialogue, progress=False)
    assert result.asked == 2
    assert result.found >= 1  # an early round left the small context and came back from memory
    assert [d["user"] for d in result.details] == [dialogue[-2]["user"], dialogue[-1]["user"]]


def test_persona_real_path_asks_every_probe_in_one_conversation(tiny):
    from qwen_kit.chat.persona import load_persona

    persona = load_persona(ROOT / "data/personas/card_v2_example.json")
    # found: the fact the answer needs reached the prompt. The name is in the card itself; the
    # workshop's street only in a lore entry keyed on "workshop"/"tools", which the second probe
    # does not say and the third does; the fourth asks for a fact the card never gives.
    probes = [{"user": "What is your name?", "expect_any": ["Ada"]},
              {"user": "Where do you repair clocks?", "expect_any": ["Cockburn"]},
              {"user": "Where is your workshop?", "expect_any": ["Cockburn"]},
              {"user": "Is your favourite city Zanzibar?", "expect_any": ["Zanzibar"]}]
    result = real_path_persona(ChatConfig(greedy=True, max_new_tokens=4), tiny, persona, probes, progress=False)
    assert result.asked == 4 and [d["user"] for d in result.details] == [p["user"] for p in probes]
    assert [d["found"] for d in result.details] == [True, False, True, False]
    assert result.found == 2 and result.row("fact in the prompt")["fact in the prompt"] == 0.5


def test_a_reply_of_source_numbers_does_not_answer_a_number():
    """Seen on the real Qwen Coder model: "How many books…?" answered "[1] [2] … [12]" was scored
    right because "12" is in "[12]". Citation marks are not an answer; an answer that cites is."""
    from qwen_kit.chat.evaluate import answered

    numbers_only = " ".join(f"[{i}]" for i in range(1, 13))
    assert not answered(numbers_only, ["twelve", "12"])
    assert answered("Students may borrow up to 12 books at a time [1].", ["twelve", "12"])
    assert answered("最多可借十二本书[2]。", ["十二", "12"])
