"""scripts/chat.py on the real Qwen2.5-Coder-0.5B-Instruct: English and Chinese answers, as a user
sees them (a subprocess, piped questions, JSON lines out)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import QWEN, run_script

pytestmark = pytest.mark.qwen


def test_greedy_chat_answers_in_english_and_chinese(qwen_dir):
    res = run_script("chat.py", "--model", QWEN, "--greedy", "--jsonl", "--max-new-tokens", "32",
                     input="What is the capital of France?\n/reset\n中国的首都是哪里？\n", timeout=600)
    assert res.returncode == 0, res.stderr.decode()
    turns = [json.loads(line) for line in res.stdout.decode("utf-8").splitlines() if line.strip()]
    assert [t["user"] for t in turns] == ["What is the capital of France?", "中国的首都是哪里？"]
    assert "Paris" in turns[0]["assistant"]
    assert "北京" in turns[1]["assistant"]


def test_the_same_answers_with_4bit_weights(qwen_dir):
    """--load-in-4bit (bitsandbytes nf4, which runs on the CPU too): what a T4 user loads 1.5B with."""
    res = run_script("chat.py", "--model", QWEN, "--greedy", "--jsonl", "--max-new-tokens", "16", "--load-in-4bit",
                     input="What is the capital of France?\n/reset\n中国的首都是哪里？\n", timeout=900)
    assert res.returncode == 0, res.stderr.decode()
    assert "4-bit nf4" in res.stderr.decode()  # the loader says so: not silently full precision
    turns = [json.loads(line) for line in res.stdout.decode("utf-8").splitlines() if line.strip()]
    assert "Paris" in turns[0]["assistant"] and "北京" in turns[1]["assistant"]
