"""The API server driven by the official openai client, over the tiny Qwen2 model: plain and
streamed replies, stop sequences, max_tokens, concurrent clients answered as if alone, the
kit's pipeline chosen by model name, errors in OpenAI's shape, keys, and a killed client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from qwen_kit.chat.prompt import Round
from tests.conftest import free_port, start_serve, stop_process

ROOT = Path(__file__).resolve().parents[2]
KEY, ALICE_KEY = "test-key-0123", "alice-key-4567"


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
    from qwen_kit.chat.pipeline import ChatConfig
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


def test_knowledge_base_persona_and_sources_by_model_name(client, server):
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
    # the persona's pipeline built by hand: the server's prompt is that one, persona card and all
    from qwen_kit.chat.pipeline import assemble_chat
    from qwen_kit.chat.persona import load_persona

    api = server.api
    label = api.persona_names["persona:lighthouse_keeper"]
    keeper = load_persona(ROOT / "data/personas/lighthouse_keeper.yaml")
    local = assemble_chat(replace(api.cfg.chat, max_new_tokens=4, greedy=True), api.web.loaded, persona=keeper,
                          persona_knowledge=api.web.persona_docs.get(label))
    local.engine.rounds = []  # the API's client history replaces the greeting
    turn = local.engine.start_turn("Who are you?")
    assert "Maren Holt" in turn.prompt and persona.usage.prompt_tokens == turn.stats.prompt_tokens
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Who are you?"}],
                                           temperature=0, max_tokens=4)
    assert persona.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the card is in the prompt


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
    assert {x["user"] for x in lines} >= {"anon:bob", "key:alice/bob"}


def test_a_caller_without_a_named_key_never_reaches_the_local_users_memories(server):
    """The terminal's (and the key-less page's) memories belong to whoever runs the server: an
    unnamed key's holder who sends no ``user`` gets the anonymous namespace, not ``--user``'s."""
    from openai import OpenAI

    local = server.api.web.memory_of(server.api.cfg.chat.user)
    secret = "The local user's locker code is 4242."
    with server.api.web.state_lock:
        local.remember([Round(secret, "Noted.", time.time())])
    anon = OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    asked = [{"role": "user", "content": "What is the locker code?"}]
    reply = anon.chat.completions.create(model="tiny+memory", messages=asked, temperature=0, max_tokens=4)
    assert secret not in [m["user_text"] for m in reply.model_extra["qwen_kit"]["memories"]]
    rows = [json.loads(x) for x in Path(server.api.cfg.chat.memory_file).read_text().splitlines() if x.strip()]
    assert {r["user"] for r in rows if r["user_text"] == asked[0]["content"]} == {"anon:"}


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


def test_a_full_waiting_line_gets_503_and_the_line_moves_on(tiny, tmp_path):
    """Every waiting request holds a thread and a connection: past --max-waiting the server says
    busy (503, Retry-After, OpenAI's error shape) instead of piling them up."""
    running = start(tiny, tmp_path, max_batch=1, max_waiting=1)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "ignore_eos": True,
            "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    health = f"http://127.0.0.1:{running.port}/health"

    def wait_for(field: str) -> None:
        deadline = time.time() + 60
        while httpx.get(health).json()[field] < 1:
            assert time.time() < deadline, f"no request became {field}"
            time.sleep(0.05)

    try:
        with httpx.Client(base_url=running.url, headers=headers, timeout=120) as client:
            streams = [client.send(client.build_request("POST", "/chat/completions", json=body), stream=True)]
            wait_for("generating")  # the one slot is taken by a long reply
            streams.append(client.send(client.build_request("POST", "/chat/completions", json=body), stream=True))
            wait_for("waiting")  # the line holds one
            third = client.post("/chat/completions", json={**body, "stream": False})
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert third.json()["error"]["code"] == "server_busy"
            for stream in streams:  # both clients hang up: their requests end and the line empties
                stream.close()
            deadline = time.time() + 60
            while (h := httpx.get(health).json())["generating"] or h["waiting"]:
                assert time.time() < deadline, "the closed streams were never cancelled"
                time.sleep(0.1)
            after = client.post("/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            assert after.status_code == 200  # the line moved on
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
    from qwen_kit.chat.pipeline import ChatConfig
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


# -- the API keeps the client's history; failures write nothing and every stream ends ----------
def test_the_clients_history_reaches_the_model_as_sent(client, server):
    """Two rounds answered "Sure." stay in the prompt: the facts the user gave in them too."""
    from qwen_kit.chat.prompt import count_tokens, render_prompt

    messages = [{"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "My locker is number 4417."}, {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": "My bike is the red one."}, {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": "Which locker is mine?"}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=4)
    want = count_tokens(server.api.web.loaded.tokenizer, render_prompt(server.api.web.loaded.tokenizer, messages))
    assert r.usage.prompt_tokens == want
    assert "dropped_rounds" not in r.model_extra["qwen_kit"]


def test_rounds_left_out_are_the_oldest_and_the_reply_says_why(client):
    long = " ".join(f"word{i}" for i in range(300))
    history = []
    for i in range(12):  # about 12 x 600 tokens: more than the 4096-token context
        history += [{"role": "user", "content": f"Round {i}: {long}"}, {"role": "assistant", "content": "Sure."}]
    r = client.chat.completions.create(model="tiny", messages=[*history, {"role": "user", "content": "hi"}],
                                       temperature=0, max_tokens=4)
    extras = r.model_extra["qwen_kit"]
    assert extras["dropped_rounds"] >= 1 and extras["dropped_because"] == "context_length"
    assert 3000 < r.usage.prompt_tokens <= 4096 - 4  # whole rounds of ~600 tokens left out, no more


def test_a_failed_generation_writes_no_memory(server, monkeypatch):
    import openai

    from qwen_kit.chat.engine import GenerationFailed

    def fail(*args, **kwargs):
        raise GenerationFailed("generation failed: RuntimeError: CUDA out of memory")

    monkeypatch.setattr(server.api.backend, "generate", fail)
    client = openai_client(server)
    history = [{"role": "user", "content": "Remember that my dentist is Dr. Okonkwo-Lind."},
               {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Who is my dentist?"}]
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="tiny+memory", user="failing", messages=history, max_tokens=4)
    assert "CUDA out of memory" in failed.value.body["message"] and failed.value.body["type"] == "server_error"
    stream = client.chat.completions.create(model="tiny+memory", user="failing", messages=history, max_tokens=4,
                                            stream=True)
    with pytest.raises(openai.APIError, match="CUDA out of memory"):
        list(stream)
    time.sleep(0.5)  # memory is written off the event loop
    text = Path(server.api.cfg.chat.memory_file).read_text(encoding="utf-8")
    assert "Okonkwo-Lind" not in text and "Who is my dentist" not in text


def _sse(url, body, headers=None, timeout=60):
    """The raw lines of a streamed reply (the test fails, rather than hangs, on a stream that never ends)."""
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {KEY}", **(headers or {})}) as r:
        return r.status_code, [line for line in r.iter_lines() if line]


def test_every_stream_ends_even_when_the_memory_write_fails(server, monkeypatch):
    from qwen_kit.chat.memory import MemoryFile

    def full(self, records):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MemoryFile, "append", full)
    body = {"model": "tiny+memory", "user": "diskfull", "max_tokens": 3, "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}
    status, lines = _sse(server.url, body)
    assert status == 200 and lines[-1] == "data: [DONE]"
    assert any("No space left on device" in line for line in lines[:-1])
    r = httpx.post(f"{server.url}/chat/completions", json={**body, "stream": False}, timeout=60,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 500 and "No space left" in r.json()["error"]["message"]


def test_a_slow_memory_write_does_not_stop_the_server(server, monkeypatch):
    """Memory is indexed off the event loop: /health answers while indexing a round takes 3 s
    (a big embedder on a busy CPU)."""
    from qwen_kit.chat.memory import LongTermMemory

    remember = LongTermMemory.remember

    def slow(self, rounds, vectors=None):
        time.sleep(3)
        return remember(self, rounds, vectors)

    monkeypatch.setattr(LongTermMemory, "remember", slow)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(openai_client(server).chat.completions.create, model="tiny+memory", user="slow",
                             messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        time.sleep(1)
        start = time.perf_counter()
        assert httpx.get(f"{server.url.removesuffix('/v1')}/health", timeout=30).status_code == 200
        assert time.perf_counter() - start < 1.0
        answer.result()


def test_the_memory_index_is_not_rewritten_for_every_reply(server, monkeypatch):
    """The file gets every round at once; the index cache is saved when new, then once things
    are quiet (SAVE_AFTER_S) or at shutdown, not rewritten and re-hashed per reply."""
    if hasattr(server.api, "writer"):
        monkeypatch.setattr(server.api.writer, "SAVE_AFTER_S", 60.0)
    client = openai_client(server)
    for text in ("My locker is 4417.", "My bike is red.", "My cat is Mochi."):
        client.chat.completions.create(model="tiny+memory", user="quiet", max_tokens=2,
                                       messages=[{"role": "user", "content": text}])
    history = Path(server.api.cfg.chat.memory_file)
    assert sum("4417" in line or "Mochi" in line or "bike" in line for line in history.read_text().splitlines()) == 3
    root = history.with_name(history.name + ".index")
    [folder] = [d for d in root.iterdir() if "4417" in (d / "chunks.jsonl").read_text(encoding="utf-8")]
    manifest = folder / "manifest.json"
    assert json.loads(manifest.read_text())["chunks"] == 1  # saved once, when it was new
    server.api.writer.submit(server.api.writer.flush).result(timeout=60)  # what the quiet timer and close() do
    assert json.loads(manifest.read_text())["chunks"] == 3


def test_eight_plain_requests_are_generated_together(tiny, tmp_path):
    """Non-streamed requests have threads of their own, as many as --max-batch slots."""
    running = start(tiny, tmp_path, max_batch=8)
    try:
        client = openai_client(running)

        def ask(q):
            return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                                  max_tokens=400, extra_body={"ignore_eos": True})

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, QUESTIONS))
        assert [r.usage.completion_tokens for r in replies] == [400] * 8
        assert running.api.backend.batcher.largest_batch == 8
    finally:
        running.stop()


# -- OpenAI protocol conformance ----------------------------------------------------------------
def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_every_route_answers_errors_in_openai_shape(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    _error(httpx.get(f"{server.url}/no/such/path", headers=auth), 404)
    _error(httpx.get(f"{server.url}/chat/completions", headers=auth), 405)
    _error(httpx.post(f"{server.url}/models", headers=auth, json={}), 405)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for bad in ({"stream": True, "stream_options": "yes"}, {"stream": True, "stream_options": {"include_usage": "y"}},
                {"stream_options": {"include_usage": True}}):
        err = _error(httpx.post(f"{server.url}/chat/completions", headers=auth, json={**body, **bad}), 400)
        assert err["param"] == "stream_options"


@pytest.mark.parametrize("field,value", [("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
                                         ("functions", [{"name": "f", "parameters": {}}]),
                                         ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
                                         ("response_format", {"type": "json_object"}),
                                         ("logprobs", True), ("top_logprobs", 2), ("n", 2)])
def test_fields_that_would_change_the_answer_are_refused_by_name(client, field, value):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={field: value})
    assert refused.value.body["param"] == field and field in refused.value.body["message"]


def test_null_and_neutral_fields_are_accepted_and_usage_is_null_until_the_last_chunk(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": None,
            "logprobs": False, "response_format": {"type": "text"}, "tools": [], "stream_options": None}
    r = httpx.post(f"{server.url}/chat/completions", json=body, timeout=60, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    status, lines = _sse(server.url, {**body, "n": 1, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert status == 200 and lines[-1] == "data: [DONE]"
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


# -- the door: the real server in a subprocess --------------------------------------------------
def _serve(tiny_qwen_dir, folder, *args, env=None):
    return start_serve(["--model", str(tiny_qwen_dir), "--memory-file", str(folder / "chat_history.txt"),
                        "--max-new-tokens", "8", "--max-context", "1024", "--greedy", *args], folder / "server.log",
                       env=env)


@pytest.fixture(scope="module")
def open_server(tiny_qwen_dir, tmp_path_factory):
    """serve.py on loopback without keys (what a browser page would attack), one allowed origin."""
    folder = tmp_path_factory.mktemp("open-server")
    proc, url = _serve(tiny_qwen_dir, folder, "--allowed-origins", "http://127.0.0.1:3000")
    yield {"url": url, "folder": folder, "proc": proc}
    stop_process(proc)


CHAT = {"model": "default", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def test_a_cross_origin_text_plain_post_is_refused(open_server):
    """The request a web page can send anywhere without asking first (a "simple" request)."""
    url = f"{open_server['url']}/v1/chat/completions"
    r = httpx.post(url, content=json.dumps(CHAT), timeout=60,
                   headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert _error(r, 403)["code"] == "origin_not_allowed"
    assert _error(httpx.post(url, content=json.dumps(CHAT), timeout=60, headers={"Content-Type": "text/plain"}),
                  415)["code"] == "unsupported_media_type"
    assert _error(httpx.post(url, json=CHAT, timeout=60, headers={"Origin": "http://evil.example"}), 403)
    assert _error(httpx.options(url, timeout=60, headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "POST"}), 403)
    # the allowed origin: preflight and request answered, with CORS headers naming it
    pre = httpx.options(url, timeout=60, headers={"Origin": "http://127.0.0.1:3000",
                                                  "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
    ok = httpx.post(url, json=CHAT, timeout=60, headers={"Origin": "http://127.0.0.1:3000"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
    assert httpx.post(url, json=CHAT, timeout=60).status_code == 200  # no Origin: not a browser


def test_a_foreign_host_is_refused(open_server):
    """DNS rebinding: evil.example resolves to 127.0.0.1, and the browser sends Host: evil.example."""
    url = open_server["url"]
    port = url.rsplit(":", 1)[1]
    for path in ("/health", "/v1/models"):
        assert _error(httpx.get(url + path, headers={"Host": f"evil.example:{port}"}), 403)["code"] == "host_not_allowed"
    assert _error(httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60,
                             headers={"Host": f"evil.example:{port}"}), 403)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{url}/v1/models", headers={"Host": host}).status_code == 200


def test_user_names_cannot_leave_the_index_folder(open_server):
    """user "..": before, the index was written into the memory file's own folder."""
    url, folder = open_server["url"], open_server["folder"]
    names = ["..", ".", "/", "alice/x", "alice_x", "../../etc"]
    for name in names:
        r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "default+memory", "user": name},
                       timeout=60)
        assert r.status_code == 200, r.text
    deadline = time.time() + 30
    while len([d for d in (folder / "chat_history.txt.index").iterdir() if d.is_dir()]) < len(names):
        assert time.time() < deadline, "the memory indexes were not saved"
        time.sleep(0.2)
    assert sorted(p.name for p in folder.iterdir()) == ["chat_history.txt", "chat_history.txt.index",
                                                        "chat_history.txt.lock", "server.log"]
    rows = [json.loads(x) for x in (folder / "chat_history.txt").read_text(encoding="utf-8").splitlines()]
    assert sorted({r["user"] for r in rows}) == sorted(f"anon:{n}" for n in names)


@pytest.fixture(scope="module")
def keyed_server(tiny_qwen_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed-server")
    proc, url = _serve(tiny_qwen_dir, folder, "--memory", env={"QWEN_KIT_API_KEYS": f"{KEY},alice:{ALICE_KEY}"})
    yield {"url": url + "/v1", "folder": folder, "proc": proc}
    stop_process(proc)


def test_an_unnamed_key_cannot_reach_a_named_holders_memories(keyed_server):
    from openai import OpenAI

    fact = "My locker code is 90210 and my cat is Quillon."
    ask = [{"role": "user", "content": "What is my locker code?"}]
    alice = OpenAI(base_url=keyed_server["url"], api_key=ALICE_KEY, max_retries=0)
    alice.chat.completions.create(model="default", messages=[{"role": "user", "content": fact}], max_tokens=2)
    again = alice.chat.completions.create(model="default", messages=ask, max_tokens=2)
    assert [m["user_text"] for m in again.model_extra["qwen_kit"]["memories"]] == [fact]  # alice has it
    anyone = OpenAI(base_url=keyed_server["url"], api_key=KEY, max_retries=0)
    for user in ("alice", "key:alice", "web:alice", None):
        spy = anyone.chat.completions.create(model="default", messages=ask, max_tokens=2,
                                             **({"user": user} if user else {}))
        assert spy.model_extra["qwen_kit"]["memories"] == [], user


def test_a_key_file_with_only_comments_is_refused(tmp_path):
    from tests.conftest import run_script

    keys = tmp_path / "keys.txt"
    keys.write_text("# put one KEY or NAME:KEY per line\n\n   \n", encoding="utf-8")
    keys.chmod(0o600)
    r = run_script("serve.py", "--api-key-file", str(keys), "--model", "no-such-model-needed",
                   "--memory-file", str(tmp_path / "m.txt"), timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2 and "holds no key" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("bound,kw,host,allowed", [
    ("127.0.0.1", {}, "127.0.0.1:8000", True), ("127.0.0.1", {}, "localhost:8000", True),
    ("127.0.0.1", {}, "[::1]:8000", True), ("127.0.0.1", {}, "evil.example:8000", False),
    ("127.0.0.1", {}, "localhost.evil.example", False), ("127.0.0.1", {}, "", False),
    ("127.0.0.1", {"authenticated": True}, "evil.example", False),  # loopback: keys do not open it
    ("127.0.0.1", {"allowed_hosts": ["chat.lab.example,other.example"]}, "chat.lab.example:443", True),
    ("127.0.0.1", {"allowed_hosts": [".lab.example"]}, "a.b.lab.example", True),
    ("127.0.0.1", {"allowed_hosts": [".lab.example"]}, "evillab.example", False),
    ("0.0.0.0", {}, "10.1.2.3:8000", True), ("0.0.0.0", {}, "box.lan:8000", False),
    ("0.0.0.0", {"authenticated": True}, "u1-abc.autodl.example:8443", True),
    ("192.168.1.5", {}, "192.168.1.5:8000", True), ("192.168.1.5", {}, "10.0.0.1", False),
    ("127.0.0.1", {"share": True}, "abcd1234.gradio.live", True)])
def test_the_door_answers_only_the_names_the_server_listens_as(bound, kw, host, allowed):
    from qwen_kit.door import DoorPolicy

    assert DoorPolicy.for_address(bound, **kw).host_allowed(host) is allowed


@pytest.mark.parametrize("origins,origin,host,allowed", [
    ([], "http://127.0.0.1:8000", "127.0.0.1:8000", True),  # the page the server itself served
    ([], "http://localhost", "localhost:80", True), ([], "https://chat.lab", "chat.lab:443", True),
    ([], "http://localhost:80", "localhost", True),
    ([], "http://localhost:8001", "localhost:8000", False), ([], "https://localhost", "localhost:80", False),
    ([], "http://evil.example", "127.0.0.1:8000", False), ([], "null", "127.0.0.1:8000", False),
    (["https://chat.lab.example"], "https://chat.lab.example:443", "127.0.0.1:8000", True),
    (["https://chat.lab.example:8443"], "https://chat.lab.example", "127.0.0.1:8000", False)])
def test_a_browser_origin_is_the_servers_own_or_one_listed(origins, origin, host, allowed):
    from qwen_kit.door import DoorPolicy

    assert DoorPolicy.for_address("127.0.0.1", allowed_origins=origins).origin_allowed(origin, host) is allowed
