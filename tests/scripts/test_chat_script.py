"""scripts/chat.py driven as a user drives it: piped lines in, JSON lines out, exit codes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_script


def _jsonl(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode("utf-8").splitlines() if line.strip()]


def test_piped_lines_are_turns_and_commands_work(tiny_qwen_dir, tmp_path):
    saved = tmp_path / "conv.json"
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "6", "--jsonl",
                     input=f"hello\n\n你好\n/save {saved}\n/reset\nthird\n/exit\nnever sent\n")
    assert res.returncode == 0, res.stderr.decode()
    turns = _jsonl(res.stdout)
    assert [t["user"] for t in turns] == ["hello", "你好", "third"]
    assert all(isinstance(t["assistant"], str) for t in turns)
    conv = json.loads(saved.read_text(encoding="utf-8"))
    assert [r["user"] for r in conv["rounds"]] == ["hello", "你好"]
    assert "你好" in saved.read_text(encoding="utf-8")  # readable, not \\u-escaped


@pytest.mark.parametrize("args,stdin,needle", [
    (["--model", "/no/such/model"], "hi\n", "model folder /no/such/model does not exist"),
    (["--max-context", "40", "--system", "You are a very careful assistant. " * 10], "hi\n",
     "system prompt alone needs"),
    (["--persona", "data/personas"], "hi\n", "is a folder; give one persona file"),
])
def test_user_mistakes_get_one_line_and_exit_code_2(tiny_qwen_dir, args, stdin, needle):
    if "--model" not in args:
        args = ["--model", str(tiny_qwen_dir), *args]
    res = run_script("chat.py", *args, "--max-new-tokens", "8", input=stdin)
    err = res.stderr.decode().strip().splitlines()
    assert res.returncode == 2
    assert needle in err[-1] and "Traceback" not in res.stderr.decode()


def test_a_folder_without_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_script("chat.py", "--model", str(tmp_path / "empty"), input="hi\n")
    assert res.returncode == 2 and b"has no config.json" in res.stderr and b"Traceback" not in res.stderr


def test_a_non_utf8_line_is_reported_with_its_number_after_earlier_turns(tiny_qwen_dir):
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "4", "--jsonl",
                     input=b"first line\n\xff\xfe broken\nthird\n")
    assert res.returncode == 2
    assert [t["user"] for t in _jsonl(res.stdout)] == ["first line"]  # the good turn is not lost
    last = res.stderr.decode().strip().splitlines()[-1]
    assert "stdin line 2 is not valid UTF-8" in last and b"Traceback" not in res.stderr


def test_a_too_long_message_is_skipped_with_an_error_and_exit_2(tiny_qwen_dir):
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "4",
                     "--max-context", "120", "--jsonl", input="word " * 300 + "\nshort\n")
    turns = _jsonl(res.stdout)
    assert res.returncode == 2
    assert "error" in turns[0] and turns[1]["user"] == "short" and "assistant" in turns[1]


@pytest.mark.slow
def test_demo_model_answers_paris():
    res = run_script("chat.py", "--model", "demo", "--greedy", "--jsonl", "--max-new-tokens", "40",
                     input="What is the capital of France?\n")
    assert res.returncode == 0, res.stderr.decode()
    (turn,) = _jsonl(res.stdout)
    assert "Paris" in turn["assistant"]


@pytest.mark.slow
def test_demo_model_stops_at_its_end_token(demo):
    from qwen_kit.chat.engine import ChatEngine, GenerationSettings

    engine = ChatEngine(demo.model, demo.tokenizer, settings=GenerationSettings(max_new_tokens=120, greedy=True),
                        eos_token_ids=demo.eos_token_ids)
    turn = engine.start_turn("Say hello in one short sentence.")
    list(turn)
    assert turn.stats.stopped_at_eos and turn.stats.new_tokens < 120
    assert "<|im_end|>" not in turn.text
