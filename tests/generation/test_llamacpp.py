"""``--backend llamacpp``: a GGUF file in llama.cpp, in this process, behind the kit's own chat
pipeline. The reference is the embedded transformers backend on the folder the file was exported
from: the same prompt, the same sampling rule, so the same tokens (f16 export of the tiny Qwen2).

Needs llama.cpp's Python bindings in this venv (`make llama-backend`); skipped, saying so, without.
"""

from __future__ import annotations

import json
import threading

import pytest

from qwen_kit.generation.base import TurnStats
from qwen_kit.generation.llamacpp import llama_cpp_available
from qwen_kit.generation.sampling import GenerationSettings
from tests.conftest import run_script

needs_llama = pytest.mark.skipif(
    not llama_cpp_available(),
    reason="llama.cpp's Python bindings (llama_cpp) are not importable in this venv: run `make llama-backend` "
           "(installs llama-cpp-python from requirements/lock-llama.txt) to test --backend llamacpp")

CHATS = [
    [{"role": "user", "content": "When does the library open on Saturday?"}],
    [{"role": "system", "content": "你是图书馆的助手。"}, {"role": "user", "content": "图书馆周六几点开门？"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Can I borrow 12 books?\n\nAnd renew them online? 🙂"}],
]


@pytest.fixture(scope="module")
def gguf_file(tiny_qwen_dir, tmp_path_factory):
    from qwen_kit.export.gguf import export_gguf

    return export_gguf(str(tiny_qwen_dir), tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", "f16",
                       modelfile=False).path


@pytest.fixture(scope="module")
def llama(gguf_file, tmp_path_factory):
    from qwen_kit.generation.llamacpp import LlamaCppBackend

    return LlamaCppBackend(gguf_file, n_ctx=1024, threads=1, tokenizer_cache=tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def llama_f32(tiny_qwen_dir, llama, tmp_path_factory):
    """An f32 export: llama.cpp's logits then equal transformers' to float32 rounding, so even a
    random model's near-uniform draws (the tiny Qwen's) must land on the same tokens."""
    from qwen_kit.export.gguf import export_gguf
    from qwen_kit.generation.llamacpp import LlamaCppBackend

    path = export_gguf(str(tiny_qwen_dir), tmp_path_factory.mktemp("gguf32") / "tiny-f32.gguf", "f32",
                       modelfile=False).path
    return LlamaCppBackend(path, llama.tokenizer, n_ctx=1024, threads=1)


@pytest.fixture(scope="module")
def embedded(tiny):
    from qwen_kit.generation.embedded import EmbeddedBackend

    return EmbeddedBackend(tiny.model, tiny.tokenizer, tiny.eos_token_ids, tiny.tokenizer.pad_token_id)


def prompt_of(tiny, messages) -> str:
    return tiny.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def reply(backend, prompt, settings, stop=(), stopped=None, on_piece=None):
    pieces: list[str] = []
    stats = TurnStats()
    stopped = stopped or threading.Event()

    def take(piece):
        pieces.append(piece)
        if on_piece:
            on_piece(piece, pieces)

    reason = backend.generate(prompt, [], settings, list(stop), stopped, take, stats)
    return pieces, stats, reason


@needs_llama
@pytest.mark.parametrize("rule", [dict(), dict(repetition_penalty=1.0), dict(repetition_penalty=1.5),
                                  dict(repetition_penalty=1.5, penalize_prompt=True)], ids=str)
def test_greedy_replies_equal_the_embedded_backends_piece_for_piece(llama, embedded, tiny, rule):
    settings = GenerationSettings(max_new_tokens=24, greedy=True, **rule)
    for messages in CHATS:
        prompt = prompt_of(tiny, messages)
        got, want = reply(llama, prompt, settings), reply(embedded, prompt, settings)
        assert got[0] == want[0]  # the same text pieces in the same order: the same tokens
        assert (got[1].new_tokens, got[1].last_token_id, got[2]) == (want[1].new_tokens, want[1].last_token_id, want[2])


@needs_llama
def test_the_repetition_penalty_rule_is_the_kits_not_llama_cpps(llama, tiny):
    """A strong penalty counted over the reply only and over prompt + reply must give different
    replies: the backend honours --penalize-prompt (llama.cpp's own repeat_penalty cannot)."""
    prompt = prompt_of(tiny, CHATS[2])
    reply_only = reply(llama, prompt, GenerationSettings(max_new_tokens=24, greedy=True, repetition_penalty=3.0))[0]
    with_prompt = reply(llama, prompt, GenerationSettings(max_new_tokens=24, greedy=True, repetition_penalty=3.0,
                                                          penalize_prompt=True))[0]
    assert reply_only != with_prompt


@needs_llama
@pytest.mark.parametrize("rule", [dict(), dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=1.3, top_k=5),
                                  dict(top_p=0.5)], ids=str)
def test_a_seeded_sampled_reply_repeats_and_is_the_embedded_backends(llama, llama_f32, embedded, tiny, rule):
    prompt = prompt_of(tiny, CHATS[0])
    settings = GenerationSettings(max_new_tokens=16, seed=7, **rule)
    first, again = reply(llama, prompt, settings)[0], reply(llama, prompt, settings)[0]
    assert first == again
    other = [reply(llama, prompt, GenerationSettings(max_new_tokens=16, seed=s, **rule))[0] for s in (8, 9, 10)]
    assert any(o != first for o in other)
    # the kit's rule draws from llama.cpp's logits as from transformers': the same seed, the same
    # reply (on the f32 file; f16's rounding moves a near-uniform draw's boundaries)
    assert reply(llama_f32, prompt, settings)[0] == reply(embedded, prompt, settings)[0]


@needs_llama
@pytest.mark.parametrize("rule", [dict(top_p=0.0), dict(top_k=1), dict(temperature=0.0)], ids=str)
def test_settings_that_keep_only_the_likeliest_token_are_greedy(llama, tiny, rule):
    prompt = prompt_of(tiny, CHATS[1])
    greedy = reply(llama, prompt, GenerationSettings(max_new_tokens=16, greedy=True))[0]
    assert reply(llama, prompt, GenerationSettings(max_new_tokens=16, seed=3, **rule))[0] == greedy


@needs_llama
def test_stats_stop_strings_length_and_cancellation(llama, tiny):
    prompt = prompt_of(tiny, CHATS[0])
    settings = GenerationSettings(max_new_tokens=12, greedy=True, ignore_eos=True)
    pieces, stats, reason = reply(llama, prompt, settings)
    assert reason == "length" and stats.new_tokens == 12
    assert stats.prompt_tokens == len(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < stats.first_token_s <= stats.total_s
    text = "".join(pieces)
    stop = text[len(text) // 2:][:3]  # a stop string from the middle of the reply
    cut, _, reason = reply(llama, prompt, settings, stop=[stop])
    assert reason == "stop" and "".join(cut) == text[: text.find(stop)]
    already = threading.Event()
    already.set()
    assert reply(llama, prompt, settings, stopped=already)[::2] == ([], "cancelled")
    flag = threading.Event()
    got, stats, reason = reply(llama, prompt, settings, stopped=flag,
                               on_piece=lambda _p, seen: len(seen) == 3 and flag.set())
    assert reason == "cancelled" and len(got) == 3 and stats.new_tokens < 12


@needs_llama
def test_the_cached_prefix_changes_no_reply(llama, gguf_file, tiny, tmp_path):
    """Turn after turn llama.cpp keeps what the prompts share; a reply must be what a fresh
    context gives for the same prompt."""
    from qwen_kit.generation.llamacpp import LlamaCppBackend

    settings = GenerationSettings(max_new_tokens=10, greedy=True)
    prompts = [prompt_of(tiny, CHATS[2][:1]), prompt_of(tiny, CHATS[2]), prompt_of(tiny, CHATS[0]),
               prompt_of(tiny, CHATS[0])]
    in_turn = []
    for p in prompts:
        in_turn.append(reply(llama, p, settings)[0])
        ids = llama.tokenize(p)  # what llama.cpp holds now: this prompt, then this reply's tokens
        assert llama.llm.input_ids[: llama.llm.n_tokens].tolist()[: len(ids)] == ids
    assert in_turn == [reply(LlamaCppBackend(gguf_file, llama.tokenizer, n_ctx=1024, threads=1), p, settings)[0]
                       for p in prompts]


@needs_llama
def test_end_ids_come_from_the_file(llama, tiny):
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in llama.end_ids and tiny.tokenizer.eos_token_id in llama.end_ids


def _jsonl(res):
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    return [json.loads(line) for line in res.stdout.decode("utf-8").splitlines() if line.strip()]


@needs_llama
def test_chat_py_with_the_gguf_answers_as_with_the_folder(gguf_file, tiny_qwen_dir, tmp_path):
    turns = "When does the library open?\n图书馆几点关门？\nAnd on Sunday?\n"
    env = {"QWEN_KIT_CACHE": str(tmp_path / "cache")}
    common = ["--greedy", "--jsonl", "--max-new-tokens", "12", "--max-context", "512"]
    got = _jsonl(run_script("chat.py", "--backend", "llamacpp", "--model", str(gguf_file), "--threads", "1", *common,
                            input=turns, env=env))
    want = _jsonl(run_script("chat.py", "--model", str(tiny_qwen_dir), *common, input=turns, env=env))
    assert len(got) == 3 and got == want
    assert any((tmp_path / "cache" / "gguf-tokenizers").iterdir())  # the next start reads the tokenizer from here


def test_a_gguf_file_without_the_backend_gets_a_one_line_hint(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    res = run_script("chat.py", "--model", str(fake), input="hi\n")
    assert res.returncode == 2 and b"Traceback" not in res.stderr
    assert "--backend llamacpp" in res.stderr.decode().strip().splitlines()[-1]


@needs_llama
def test_a_file_llama_cpp_refuses_is_named_in_one_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    res = run_script("chat.py", "--backend", "llamacpp", "--model", str(broken), input="hi\n")
    assert res.returncode == 2 and b"Traceback" not in res.stderr
    assert f"{broken}: llama.cpp cannot load it" in res.stderr.decode().strip().splitlines()[-1]


def test_the_llamacpp_backend_needs_a_gguf_file(tiny_qwen_dir):
    res = run_script("chat.py", "--backend", "llamacpp", "--model", str(tiny_qwen_dir), input="hi\n")
    assert res.returncode == 2 and b"Traceback" not in res.stderr
    assert "needs --model FILE.gguf" in res.stderr.decode().strip().splitlines()[-1]


def test_make_llama_backend_installs_the_pinned_bindings_into_the_kits_venv():
    from tests.conftest import make_dry_run

    install = [line for line in make_dry_run("llama-backend").splitlines() if "pip install" in line][-1]
    assert ".venv/bin/pip" in install and "-r requirements/lock-llama.txt" in install


@needs_llama
def test_serve_py_streams_concurrent_replies_each_as_alone(gguf_file, llama, tiny, tmp_path):
    """The API server over llama.cpp (a real serve.py, the official client): three requests at
    once, one llama.cpp context; each streamed reply is the one the backend gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from openai import OpenAI

    from qwen_kit.chat.prompt import render_prompt
    from tests.conftest import start_serve, stop_process

    proc, url = start_serve(["--backend", "llamacpp", "--model", str(gguf_file), "--threads", "1", "--max-context",
                             "512", "--max-new-tokens", "64", "--memory-file", str(tmp_path / "chat_history.txt")],
                            tmp_path / "server.log", timeout=120, env={"QWEN_KIT_CACHE": str(tmp_path / "cache")})
    try:
        health = httpx.get(f"{url}/health", timeout=2)
        assert health.json()["backend"] == "llamacpp"
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        model = client.models.list().data[0].id

        def ask(messages):
            pieces = []
            for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                        max_tokens=12, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            return "".join(pieces)

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(ask, CHATS))
    finally:
        stop_process(proc)
    settings = GenerationSettings(max_new_tokens=12, greedy=True)
    want = ["".join(reply(llama, render_prompt(tiny.tokenizer, m), settings)[0]) for m in CHATS]
    assert got == want and all(got)


@needs_llama
@pytest.mark.slow
def test_the_demo_model_answers_the_same_in_llama_cpp(demo, tmp_path):
    """Real language: the demo exported to f16 answers through chat.py --backend llamacpp, with
    the knowledge base, what chat.py --model demo answers, word for word."""
    from qwen_kit.export.gguf import export_gguf
    from tests.conftest import ROOT

    path = export_gguf("demo", tmp_path / "demo-f16.gguf", "f16", modelfile=False).path
    turns = "What is the capital of France?\nWhen does the library open on Saturday?\n"
    common = ["--greedy", "--jsonl", "--max-new-tokens", "40", "--rag", str(ROOT / "data/knowledge"),
              "--embedder", "minilm"]
    env = {"QWEN_KIT_CACHE": str(tmp_path / "cache")}
    got = _jsonl(run_script("chat.py", "--backend", "llamacpp", "--model", str(path), "--threads", "1", *common,
                            input=turns, env=env))
    want = _jsonl(run_script("chat.py", "--model", "demo", *common, input=turns))
    assert [(t["assistant"], t["sources"]) for t in got] == [(t["assistant"], t["sources"]) for t in want]
    assert "Paris" in got[0]["assistant"]


@needs_llama
@pytest.mark.qwen
def test_a_real_qwen_answers_the_same_in_llama_cpp(qwen_dir, tmp_path):
    """Qwen2.5-Coder-0.5B exported to f16: chat.py --backend llamacpp gives the folder's greedy
    answers word for word, English, Chinese and code, over the knowledge base (about 50 s)."""
    from qwen_kit.export.gguf import export_gguf
    from tests.conftest import ROOT

    path = export_gguf(str(qwen_dir), tmp_path / "qwen-f16.gguf", "f16", modelfile=False).path
    turns = "What is the capital of France?\n中国的首都是哪里？\nWrite a Python function that adds two numbers.\n"
    common = ["--greedy", "--jsonl", "--max-new-tokens", "48", "--rag", str(ROOT / "data/knowledge"),
              "--embedder", "minilm"]
    got = _jsonl(run_script("chat.py", "--backend", "llamacpp", "--model", str(path), *common, input=turns,
                            env={"QWEN_KIT_CACHE": str(tmp_path / "cache")}))
    want = _jsonl(run_script("chat.py", "--model", str(qwen_dir), *common, input=turns))
    assert [t["assistant"] for t in got] == [t["assistant"] for t in want]
    assert "Paris" in got[0]["assistant"] and "def " in got[2]["assistant"]
