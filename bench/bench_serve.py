#!/usr/bin/env python
"""The API server under load, measured the way users reach it: ``scripts/serve.py`` started as
its own process, N clients (the official openai client) sending the same requests at once,
side by side with the same requests sent one at a time; streamed (SSE) and non-streamed
requests alike (``--mode``).

Reports aggregate completion tokens/s (tokens the server says it generated, over the wall time
of the whole pass) and time to first token (p50/p95, from sending the request to the first
text piece; for a non-streamed request, the whole reply). Runs alternate (one-at-a-time,
together, one-at-a-time, together, ...) so a slow moment of the machine hits both. The greedy
texts are compared: every pass must give each question the same reply as the first
one-at-a-time pass (the docs promise identical replies on CPU in float32); differences are
counted and the exit status is 1 when there are any.

    python bench/bench_serve.py --model demo --clients 8 --max-tokens 64
    make bench-serve
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the capital of France?", "Write a haiku about rain.", "How do I boil an egg?",
             "Name three colors.", "What is 2+2? Explain.", "Tell me a joke.", "Why is the sky blue?",
             "What is Python used for?", "Give me a tip for studying.", "What does a library do?",
             "How many legs does a spider have?", "Describe the moon.", "What is tea made from?",
             "Suggest a name for a cat.", "What is a computer?", "Why do we sleep?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one(client, model: str, question: str, max_tokens: int, stream: bool = True) -> dict:
    sent = time.perf_counter()
    messages = [{"role": "user", "content": question}]
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
        took = time.perf_counter() - sent
        return {"ttft_s": took, "tokens": r.usage.completion_tokens, "total_s": took,
                "text": r.choices[0].message.content}
    first, tokens, pieces = None, 0, []
    chunks = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if first is None:
                first = time.perf_counter() - sent
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"ttft_s": first if first is not None else time.perf_counter() - sent, "tokens": tokens,
            "total_s": time.perf_counter() - sent, "text": "".join(pieces)}


def run_pass(client, model: str, questions: list[str], max_tokens: int, together: bool, stream: bool) -> dict:
    start = time.perf_counter()
    if together:
        with ThreadPoolExecutor(len(questions)) as pool:
            results = list(pool.map(lambda q: one(client, model, q, max_tokens, stream), questions))
    else:
        results = [one(client, model, q, max_tokens, stream) for q in questions]
    wall = time.perf_counter() - start
    ttft = sorted(r["ttft_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_p50_s": statistics.median(ttft), "ttft_p95_s": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
            "texts": [r["text"] for r in results]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="alternating pairs of passes")
    p.add_argument("--mode", choices=("stream", "plain", "both"), default="both",
                   help="streamed requests, non-streamed (plain) ones, or both")
    p.add_argument("--out", default="runs/bench/serve.json")
    a = p.parse_args(argv)
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts/serve.py"), "--model", a.model, "--port", str(port),
                               "--max-batch", str(a.clients)], stderr=subprocess.PIPE, text=True)
    try:
        import httpx

        deadline = time.time() + 600
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                print(server.stderr.read()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(a.clients)]
        one(client, model, "Hello", 4)  # warm-up: first-call costs are not the server's throughput
        modes = {"stream": [True], "plain": [False], "both": [True, False]}[a.mode]
        runs: dict[str, list[dict]] = {}
        for _ in range(a.rounds):
            for stream in modes:
                kind = "streamed" if stream else "non-streamed"
                for together in (False, True):
                    name = f"{kind}, {'together' if together else 'one at a time'}"
                    result = run_pass(client, model, questions, a.max_tokens, together, stream)
                    runs.setdefault(name, []).append(result)
                    print(f"{name}: {result['tokens_per_s']:.1f} tokens/s, {result['wall_s']:.1f} s", file=sys.stderr,
                          flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    reference = next(iter(runs.values()))[0]["texts"]
    differing = {name: sum(got != want for r in passes for got, want in zip(r["texts"], reference))
                 for name, passes in runs.items()}
    summary = {name: {k: statistics.mean(r[k] for r in passes) for k in passes[0] if k != "texts"}
               for name, passes in runs.items()}
    print(f"\n{a.clients} clients, model {a.model}, max_tokens {a.max_tokens}, greedy, {a.rounds} alternating rounds "
          f"(cpu count {os.cpu_count()})\n")
    print("| requests | aggregate completion tokens/s | TTFT p50 (s) | TTFT p95 (s) | wall (s) | tokens | "
          "replies differing from the first pass |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['tokens_per_s']:.1f} | {s['ttft_p50_s']:.2f} | {s['ttft_p95_s']:.2f} | "
              f"{s['wall_s']:.1f} | {s['tokens']:.0f} | {differing[name]} of {a.rounds * len(questions)} |")
    ratios = {}
    for stream in modes:
        kind = "streamed" if stream else "non-streamed"
        ratios[kind] = summary[f"{kind}, together"]["tokens_per_s"] / summary[f"{kind}, one at a time"]["tokens_per_s"]
        print(f"\n{kind}: together / one at a time: {ratios[kind]:.2f}x aggregate tokens/s")
    same = not any(differing.values())
    print(f"texts: {'identical in every pass' if same else 'DIFFERENT: see ' + a.out}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "runs": runs, "summary": summary, "ratios": ratios,
                               "differing": differing, "reference_texts": reference}, indent=2, ensure_ascii=False))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
