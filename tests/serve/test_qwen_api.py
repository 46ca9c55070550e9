"""The API server on the real Qwen2.5-Coder-0.5B-Instruct, started as a user starts it
(scripts/serve.py in a subprocess) and asked through the official openai client: English and
Chinese, the knowledge base with its source, the persona, and a long-term memory that one key
sees and another does not."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import QWEN, start_serve, stop_process

pytestmark = pytest.mark.qwen

KEYS = {"alice": "alice-key-0123", "bob": "bob-key-4567"}
# data/knowledge/library.md: "Students may borrow up to twelve books at a time." (the model has no
# way to know the number but the source; "28 days" and "twice" are its neighbours there)
BOOKS = "How many books can a student borrow at once?"
TWELVE = re.compile(r"\btwelve\b|\b12\b|十二", re.I)


@pytest.fixture(scope="module")
def api(qwen_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-api")
    keys = folder / "keys.txt"
    keys.write_text("".join(f"{name}:{key}\n" for name, key in KEYS.items()), encoding="utf-8")
    keys.chmod(0o600)
    memory = folder / "chat_history.txt"
    proc, url = start_serve(["--model", QWEN, "--kb", "data/knowledge", "--personas", "data/personas", "--memory",
                             "--memory-file", str(memory), "--api-key-file", str(keys), "--max-new-tokens", "40"],
                            folder / "server.log", timeout=600)
    try:
        yield {"url": url + "/v1", "memory": memory, "log": folder / "server.log"}
    finally:  # no server (2.5 GB) left running for the rest of the suite
        stop_process(proc)


def client(api, who="alice"):
    from openai import OpenAI

    return OpenAI(base_url=api["url"], api_key=KEYS[who], max_retries=0, timeout=600)


def ask(api, text, model=QWEN, who="alice", **kw):
    return client(api, who).chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                    temperature=0, **kw)


def test_plain_and_streamed_answers_in_english_and_chinese(api):
    assert "Paris" in ask(api, "What is the capital of France?").choices[0].message.content
    chunks = list(ask(api, "中国的首都是哪里？", stream=True))
    assert "北京" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_the_knowledge_base_answers_with_its_source(api):
    r = ask(api, BOOKS, model="kb:knowledge")
    assert TWELVE.search(r.choices[0].message.content), r.choices[0].message.content
    assert r.model_extra["qwen_kit"]["sources"][0]["file"].endswith("library.md")


def test_the_persona_answers_in_character(api):
    r = ask(api, "What is your name?", model="persona:lighthouse_keeper")
    assert "Maren" in r.choices[0].message.content


def test_a_remembered_fact_comes_back_to_its_key_only(api):
    ask(api, "Please remember this: my locker number is 4417.", max_tokens=8)
    deadline = time.time() + 120  # memories are written on the server's writer thread
    while "4417" not in (api["memory"].read_text(encoding="utf-8") if api["memory"].exists() else ""):
        assert time.time() < deadline, "the fact never reached the memory file"
        time.sleep(0.5)
    # a new conversation: the fact is not in the messages sent, only in alice's long-term memory
    assert "4417" in ask(api, "What is my locker number?").choices[0].message.content
    assert "4417" not in ask(api, "What is my locker number?", who="bob").choices[0].message.content
