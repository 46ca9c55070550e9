"""The API server driven by the official openai client, over the tiny Qwen2 model: plain and
streamed replies, stop sequences, max_tokens, concurrent clients answered as if alone, the
kit's pipeline chosen by model name, errors in OpenAI's shape, keys, and a killed client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY, ALICE_KEY = "test-key-0123", "alice-key-4567"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, api, port):
        import uvicorn

        from qwen_kit.serve.server import create_app

        self.api, self.port = api, port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(create_app(api), host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.api.backend.batcher.close()


def start(loaded, tmp_path, max_batch=8, **web):
    from qwen_kit.chat.cli import ChatConfig
    from qwen_kit.serve.server import ServeConfig, build_service

    chat = ChatConfig(model="tiny", max_new_tokens=24, memory_file=str(tmp_path / "chat_history.txt"))
    cfg = ServeConfig(chat=chat, max_batch=max_batch, served_name="tiny", keys=[(None, KEY), ("alice", ALICE_KEY)], **web)
    return Running(build_service(cfg, loaded=loaded), free_port())


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    running = start(tiny, tmp_path_factory.mktemp("serve"), knowledge=[str(ROOT / "data/knowledge")],
                    personas=[str(ROOT / "data/personas")])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def demo_server(demo, tmp_path_factory):
    running = start(demo, tmp_path_factory.mktemp("serve-demo"))
    yield running
    running.stop()


def openai_client(running):
    from openai import OpenAI

    return OpenAI(base_url=running.url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture()
def client(server):
    return openai_client(server)


def alone(tiny, messages, max_tokens=24):
    """The embedded engine's greedy reply, one request at a time, no batching."""
    from qwen_kit.chat.engine import ChatEngine, GenerationSettings
    from qwen_kit.chat.prompt import render_prompt

    engine = ChatEngine(tiny.model, tiny.tokenizer, eos_token_ids=tiny.eos_token_ids,
                        settings=GenerationSettings(max_new_tokens=max_tokens, greedy=True))
    prompt = render_prompt(tiny.tokenizer, messages)
    from qwen_kit.chat.engine import Turn

    n = len(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    turn = Turn(engine, messages[-1]["content"], prompt, n, {})
    turn._generate(lambda _p: None)
    return turn.text


QUESTIONS = ["When does the library close?", "Where is the cafeteria?", "How do I reset my password?",
             "宿舍几点关门？", "What is a campus card?", "Tell me about lab safety.", "Who can borrow books?",
             "Is there Wi-Fi in the dorms?"]


def test_models_lists_the_pipelines(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny" and "kb:knowledge" in ids and "persona:lighthouse_keeper" in ids


@pytest.mark.slow
def test_plain_and_streamed_replies_match_the_engine_alone(demo_server, demo):
    client = openai_client(demo_server)
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    want = alone(demo, messages)
    plain = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24)
    assert plain.choices[0].message.content == want and len(want.split()) > 5
    assert plain.usage.completion_tokens <= 24 and plain.usage.prompt_tokens > 10
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24,
                                                stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == want and len([p for p in pieces if p]) > 5 and finish in ("stop", "length")


@pytest.mark.slow
def test_max_tokens_and_stop_sequences(demo_server, demo):
    client = openai_client(demo_server)
    messages = [{"role": "user", "content": "Name five fruits."}]
    three = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=3)
    assert three.usage.completion_tokens == 3 and three.choices[0].finish_reason == "length"
    full = alone(demo, messages, max_tokens=24)
    words = full.split()
    stop = words[len(words) // 2]  # a word from the middle of the reply
    cut = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=24, stop=stop, stream=True) if c.choices)
    assert streamed == full[:full.index(stop)]


@pytest.mark.slow
def test_eight_concurrent_clients_get_their_answers_alone(demo_server, demo):
    """fp32 on CPU: batched arithmetic gives the same greedy text as one request alone."""
    client = openai_client(demo_server)
    wanted = [alone(demo, [{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len(set(wanted)) == len(wanted)  # eight different answers, not one degenerate text
    demo_server.api.backend.batcher.largest_batch = 0

    def ask(q):
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                                temperature=0, max_tokens=24, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, QUESTIONS))
    assert got == wanted
    assert demo_server.api.backend.batcher.largest_batch > 1  # they really were generated together


def test_max_tokens_and_length_on_the_tiny_model(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_knowledge_base_persona_and_sources_by_model_name(client):
    r = client.chat.completions.create(model="kb:knowledge", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                       temperature=0, max_tokens=8)
    sources = r.model_extra["qwen_kit"]["sources"]
    assert sources and sources[0]["file"].endswith("library.md")
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                           temperature=0, max_tokens=8)
    assert "sources" not in plain.model_extra["qwen_kit"]
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTIONS[0]}],
                                                 temperature=0, max_tokens=4, stream=True,
                                                 extra_body={"qwen_kit": {"knowledge": "knowledge"}}))
    assert chunks[0].model_extra["qwen_kit"]["sources"][0]["file"].endswith("library.md")
    persona = client.chat.completions.create(model="persona:lighthouse_keeper",
                                             messages=[{"role": "user", "content": "Who are you?"}],
                                             temperature=0, max_tokens=4)
    assert persona.choices[0].message.content is not None


def test_memory_is_per_user_and_named_keys_see_only_their_own(server, tiny):
    from openai import OpenAI

    bob = OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    fact = "My sister Quillon keeps seventeen orange parrots in Tallinn."
    first = bob.chat.completions.create(model="tiny+memory", user="bob", messages=[{"role": "user", "content": fact}],
                                        temperature=0, max_tokens=4)
    asked = [{"role": "user", "content": "How many parrots does Quillon keep?"}]
    again = bob.chat.completions.create(model="tiny+memory", user="bob", messages=asked, temperature=0, max_tokens=4)
    assert [m["user_text"] for m in again.model_extra["qwen_kit"]["memories"]][:1] == [fact]
    # not recalled while the client's own history already holds that round
    history = [{"role": "user", "content": fact}, {"role": "assistant", "content": first.choices[0].message.content},
               *asked]
    held = bob.chat.completions.create(model="tiny+memory", user="bob", messages=history, temperature=0, max_tokens=4)
    assert fact not in [m["user_text"] for m in held.model_extra["qwen_kit"]["memories"]]
    carol = bob.chat.completions.create(model="tiny+memory", user="carol", messages=asked, temperature=0, max_tokens=4)
    assert carol.model_extra["qwen_kit"]["memories"] == []
    alice = OpenAI(base_url=server.url, api_key=ALICE_KEY, max_retries=0)
    spy = alice.chat.completions.create(model="tiny", user="bob", messages=asked, temperature=0, max_tokens=4,
                                        extra_body={"qwen_kit": {"memory": True}})
    assert spy.model_extra["qwen_kit"]["memories"] == []  # alice's key: alice's memories, whatever 'user' says
    lines = [json.loads(x) for x in Path(server.api.cfg.chat.memory_file).read_text().splitlines() if x.strip()]
    assert {x["user"] for x in lines} >= {"bob"} and "alice/bob" in {x["user"] for x in lines}


def test_errors_come_back_in_openai_shape(client, server):
    import openai

    with pytest.raises(openai.AuthenticationError) as wrong:
        openai.OpenAI(base_url=server.url, api_key="wrong-key-999", max_retries=0).models.list()
    assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{server.url}/chat/completions", content=b"{not json", timeout=30,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "assistant", "content": "hi"}])
    assert "last message must come from the user" in bad.value.body["message"]
    long = "word " * 6000
    with pytest.raises(openai.BadRequestError) as over:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], max_tokens=8)
    assert over.value.body["code"] == "context_length_exceeded" and "4096" in over.value.body["message"]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="kb:nowhere", messages=[{"role": "user", "content": "hi"}])
    assert "kb:knowledge" in unknown.value.body["message"]
    assert httpx.get(f"{server.url.removesuffix('/v1')}/health").json()["status"] == "ok"  # no key needed


CLIENT = """
import sys, httpx
with httpx.stream("POST", sys.argv[1] + "/chat/completions", timeout=120, headers={"Authorization": "Bearer %s"},
                  json={"model": "tiny", "stream": True, "max_tokens": 3000, "ignore_eos": True,
                        "messages": [{"role": "user", "content": "Talk for a long time."}]}) as r:
    for line in r.iter_lines():
        if line:
            print(line, flush=True)
""" % KEY


def test_a_killed_client_frees_its_slot(tiny, tmp_path):
    """One slot: a client killed mid-reply must not keep the next one waiting for its 3000 tokens."""
    running = start(tiny, tmp_path, max_batch=1)
    try:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, running.url], stdout=subprocess.PIPE, text=True)
        for _ in range(5):  # it is being answered
            assert proc.stdout.readline().startswith("data:")
        health = f"http://127.0.0.1:{running.port}/health"
        assert httpx.get(health).json()["generating"] == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60
        while httpx.get(health).json()["cancelled"] < 1:
            assert time.time() < deadline, "the killed client's request was never cancelled"
            time.sleep(0.1)
        from openai import OpenAI

        reply = OpenAI(base_url=running.url, api_key=KEY, max_retries=0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 5
        assert running.api.backend.batcher.steps < 1000  # the 3000-token reply was not run to its end
    finally:
        running.stop()


@pytest.mark.slow
def test_chat_py_over_the_kits_own_server_answers_as_the_local_engine(demo_server):
    """chat.py --backend openai keeps RAG local and sends the finished messages: the same
    greedy answers and the same sources as the embedded engine."""
    questions = "When does the library close?\n宿舍几点关门？\n"
    common = [sys.executable, str(ROOT / "scripts/chat.py"), "--model", "demo", "--rag", str(ROOT / "data/knowledge"),
              "--greedy", "--max-new-tokens", "24", "--jsonl"]
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    local = subprocess.run(common, input=questions, capture_output=True, text=True, timeout=600, env=env)
    remote = subprocess.run([*common, "--backend", "openai", "--base-url", demo_server.url], input=questions,
                            capture_output=True, text=True, timeout=600, env=env)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-2000:]
    mine, theirs = ([json.loads(x) for x in out.stdout.splitlines()] for out in (local, remote))
    assert len(mine) == 2 and [m["assistant"] for m in mine] == [t["assistant"] for t in theirs]
    assert [m["sources"] for m in mine] == [t["sources"] for t in theirs] and mine[0]["sources"]
    assert "answering through" in remote.stderr


def test_chat_py_names_an_unreachable_server_in_one_line():
    port = free_port()
    out = subprocess.run([sys.executable, str(ROOT / "scripts/chat.py"), "--backend", "openai", "--base-url",
                          f"http://127.0.0.1:{port}/v1"], input="hi\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"cannot reach http://127.0.0.1:{port}/v1" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_server_over_another_server_adds_the_knowledge_base(server, tiny, tmp_path, monkeypatch):
    """--backend openai: this server retrieves and cites, the other one generates."""
    from qwen_kit.chat.cli import ChatConfig
    from qwen_kit.serve.server import ServeConfig, build_service

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    chat = ChatConfig(backend="openai", base_url=server.url, model=str(tiny.ref.path), max_new_tokens=8,
                      memory_file=str(tmp_path / "chat_history.txt"))
    proxy = Running(build_service(ServeConfig(chat=chat, knowledge=[str(ROOT / "data/knowledge")])), free_port())
    try:
        assert proxy.api.base_name == "tiny"  # the remote's own name
        client = openai_client(proxy)
        messages = [{"role": "user", "content": QUESTIONS[0]}]
        r = client.chat.completions.create(model="kb:knowledge", messages=messages, temperature=0, max_tokens=6,
                                           extra_body={"ignore_eos": True})
        assert r.model_extra["qwen_kit"]["sources"][0]["file"].endswith("library.md")
        assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
        # the other server saw the question with the sources quoted in it
        direct = openai_client(server).chat.completions.create(
            model="tiny", messages=messages, temperature=0, max_tokens=6, extra_body={"ignore_eos": True})
        assert direct.usage.prompt_tokens < r.usage.prompt_tokens
    finally:
        proxy.server.should_exit = True
        proxy.thread.join(timeout=10)
