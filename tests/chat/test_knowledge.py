"""Knowledge-base chat: sources in the output, follow-ups, the prompt budget."""

from __future__ import annotations

import json

import pytest

from qwen_kit.chat.engine import ChatEngine, GenerationSettings
from qwen_kit.chat.knowledge import KnowledgeContext
from qwen_kit.chat.prompt import Round, count_tokens
from qwen_kit.retrieval.hybrid import Embedder
from qwen_kit.retrieval.index import build_index
from tests.conftest import ROOT, run_script

KB = ROOT / "data" / "knowledge"


@pytest.fixture(scope="module")
def kb():
    return build_index(KB, embedder=Embedder(), progress=False)[0]


def test_chat_jsonl_turns_carry_the_right_sources(tiny_qwen_dir):
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "4", "--jsonl",
                     "--rag", str(KB), "--top-k", "3",
                     input="When does the library close on weekdays?\n宿舍晚上几点关门？\n")
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    first, second = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert first["sources"][0]["file"] == "library.md"
    assert second["sources"][0]["file"] == "宿舍管理规定.md"
    assert set(first["sources"][0]) == {"file", "chunk_id", "score"}


def test_plain_output_lists_sources_after_the_answer(tiny_qwen_dir):
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "4",
                     "--rag", str(KB), input="How many free printed pages do students get?\n")
    assert res.returncode == 0 and "sources: [1] it_help.md" in res.stdout.decode()


def test_a_follow_up_question_still_finds_its_document(kb, tiny):
    ctx = KnowledgeContext(kb, tiny.tokenizer, top_k=2)
    recent = [Round("When does Linden Hall Library open on weekdays?", "At 8:30 am.")]
    _, extras = ctx("And when does it close on Saturdays?", recent)
    assert extras["sources"][0]["file"] == "library.md"


def test_retrieved_text_stays_within_its_budget_and_reaches_the_prompt(kb, tiny):
    ctx = KnowledgeContext(kb, tiny.tokenizer, top_k=6, max_tokens=400)
    text, extras = ctx("What is the campus Wi-Fi called?", [])
    assert count_tokens(tiny.tokenizer, text) <= 400 and "[1]" in text and "[6]" not in text
    engine = ChatEngine(tiny.model, tiny.tokenizer, settings=GenerationSettings(max_new_tokens=2, greedy=True),
                        context_fn=ctx, eos_token_ids=tiny.eos_token_ids)
    turn = engine.start_turn("What is the campus Wi-Fi called?")
    assert "Linden-Secure" in turn.prompt and turn.extras["sources"] == extras["sources"]


def test_sources_can_be_quoted_in_the_user_turn_instead(kb, tiny):
    ctx = KnowledgeContext(kb, tiny.tokenizer, top_k=2, max_tokens=400)
    engine = ChatEngine(tiny.model, tiny.tokenizer, settings=GenerationSettings(max_new_tokens=2, greedy=True),
                        context_fn=ctx, eos_token_ids=tiny.eos_token_ids, context_placement="user")
    turn = engine.start_turn("What is the campus Wi-Fi called?")
    user_block = turn.prompt.split("<|im_start|>user\n")[-1]
    assert "Linden-Secure" in user_block and user_block.rstrip().endswith(
        "Question: What is the campus Wi-Fi called?<|im_end|>\n<|im_start|>assistant")
    turn.run()
    assert engine.rounds[-1].user == "What is the campus Wi-Fi called?"  # history keeps the user's own words


def test_plain_and_brief_layouts_put_the_best_passage_next_to_the_question(kb, tiny):
    numbered = KnowledgeContext(kb, tiny.tokenizer, top_k=3)
    text, extras = numbered("What is the campus Wi-Fi called?", [])
    best = kb.search("What is the campus Wi-Fi called?", k=1)[0].chunk.text
    plain = KnowledgeContext(kb, tiny.tokenizer, top_k=3, layout="plain")
    ptext, pextras = plain("What is the campus Wi-Fi called?", [])
    assert ptext.endswith(best) and "[1]" not in ptext and pextras["sources"] == extras["sources"]
    brief = KnowledgeContext(kb, tiny.tokenizer, top_k=3, layout="brief")
    engine = ChatEngine(tiny.model, tiny.tokenizer, settings=GenerationSettings(max_new_tokens=2, greedy=True),
                        context_fn=brief, eos_token_ids=tiny.eos_token_ids, context_placement="user")
    turn = engine.start_turn("What is the campus Wi-Fi called?")
    user_block = turn.prompt.split("<|im_start|>user\n")[-1]
    assert user_block.index(best) < user_block.index("Question: What is the campus Wi-Fi called?\nAnswer in one")
    assert "after_question" not in turn.extras  # an instruction to the prompt, not a record of the turn


def test_adaptive_k_drops_passages_far_below_the_best(kb, tiny):
    every = KnowledgeContext(kb, tiny.tokenizer, top_k=4)
    _, all_four = every("What is the campus Wi-Fi called?", [])
    close = KnowledgeContext(kb, tiny.tokenizer, top_k=4, min_score_ratio=0.99)
    _, kept = close("What is the campus Wi-Fi called?", [])
    best = all_four["sources"][0]["score"]
    assert kept["sources"] == [s for s in all_four["sources"] if s["score"] >= 0.99 * best]
    assert 1 <= len(kept["sources"]) < len(all_four["sources"])
