"""`make demo`, as a new user meets it: the README's suggested questions, asked through the
command the Makefile runs, get right answers from the demo model, and nothing is printed
before the first prompt but the kit's own status lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# each README question, and what a right answer contains
SUGGESTED = {"What is the name of the campus Wi-Fi network?": ["Linden-Secure"],
             "How many books can a student borrow at once?": ["twelve", "12 "],
             "校园卡单次最多能充值多少？": ["五百", "500"]}


def demo_command(target: str = "demo") -> list[str]:
    recipe = re.search(rf"^{target}:.*\n\t(.+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M).group(1)
    return [sys.executable if word == "$(PY)" else word for word in recipe.split() if word != "$(ARGS)"]


@pytest.mark.slow
def test_make_demo_answers_the_questions_the_readme_suggests():
    _answers_the_suggested_questions("demo", "loading demo from")


@pytest.mark.qwen
def test_make_demo_qwen_answers_them_too(qwen_dir):
    """The same questions through `make demo-qwen`: right answers, not a reply made only of
    source numbers ("[1] [2] [3]…"), which the Coder model gave with the demo's own flags."""
    _answers_the_suggested_questions("demo-qwen", "loading qwen-coder-0.5b from")


def _answers_the_suggested_questions(target: str, loading: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(q in readme for q in SUGGESTED), "the README no longer suggests these questions"
    lines = "\n/reset\n".join(SUGGESTED) + "\n"
    out = subprocess.run([*demo_command(target), "--jsonl"], input=lines, capture_output=True, text=True,
                         timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    answers = [json.loads(line)["assistant"] for line in out.stdout.splitlines()]
    for (question, expected), answer in zip(SUGGESTED.items(), answers, strict=True):
        assert any(e in answer for e in expected), f"{question!r} was answered {answer!r}"
    assert re.search(r"[\u4e00-\u9fff]", answers[2]), "a Chinese question got an answer without Chinese"
    noise = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith(
        (loading, "knowledge base:", "conversation cleared", "Loading weights"))]
    assert noise == [], f"make {target} printed more than its status lines: {noise}"
