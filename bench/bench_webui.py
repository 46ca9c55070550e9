#!/usr/bin/env python
"""What the web page costs on top of the chat engine, and how a second tab waits.

    python bench/bench_webui.py --model demo --turns 6 --max-new-tokens 64

Side by side in one run, same prompts, greedy decoding:
- engine: ChatEngine in this process, streamed (what chat.py does);
- page: the same turns sent through scripts/webui.py's HTTP API with gradio_client, streamed
  as the browser receives them (a server subprocess on 127.0.0.1).
Per turn: time to the first text, generated tokens per second, whole turn. The two replies of
each turn must be identical (greedy), which checks that the page adds nothing to the prompt.
Then two clients send at the same moment: the second's first text comes after the first's
reply is done (one generation at a time), and the wait is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PROMPTS = ["What is the capital of France?", "Give me three tips for learning to cook.",
           "Explain what a neural network is in two sentences.", "Write a short poem about the sea.",
           "How do I make a cup of green tea?", "What should I pack for a weekend hike?"]


def _text(content) -> str:
    """A chat message's text (Gradio 6 hands content over as a list of typed parts)."""
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return content or ""


def page_turn(client, text: str, max_new: int) -> tuple[float, float, str]:
    """(seconds to the first text, seconds for the whole turn, reply) through the page's API."""
    start = time.perf_counter()
    first = None
    job = client.submit(text, "(none)", "(none)", False, True, 0.7, 0.8, 20, 1.05, max_new, api_name="/send")
    last = None
    for update in job:
        messages = update[0] if isinstance(update, (list, tuple)) else update
        if messages and messages[-1]["role"] == "assistant" and _text(messages[-1]["content"]) not in ("", "…"):
            first = first or time.perf_counter() - start
        last = messages
    total = time.perf_counter() - start
    final = job.outputs()[-1][0] if job.outputs() else last
    return first or total, total, _text(final[-1]["content"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gradio_client import Client

    from qwen_kit.chat.pipeline import ChatConfig, assemble_chat, load_chat_model
    from tests.webui.conftest import start_server, stop_server

    folder = Path(tempfile.mkdtemp(prefix="bench_webui_"))
    cfg = ChatConfig(model=args.model, greedy=True, max_new_tokens=args.max_new_tokens)
    loaded = load_chat_model(cfg)
    proc, url = start_server(["--model", args.model, "--greedy", "--max-new-tokens", str(args.max_new_tokens),
                              "--memory-file", str(folder / "m.txt")], folder / "server.log")
    rows = []
    try:
        for i in range(args.turns):
            text = PROMPTS[i % len(PROMPTS)]
            engine = assemble_chat(cfg, loaded).engine  # a fresh conversation per turn, as on the page
            turn = engine.start_turn(text)
            start = time.perf_counter()
            first = None
            for _piece in turn:
                first = first or time.perf_counter() - start
            e_total = time.perf_counter() - start
            tokens = turn.stats.new_tokens
            client = Client(url, verbose=False)
            p_first, p_total, p_reply = page_turn(client, text, args.max_new_tokens)
            same = p_reply.strip() == turn.text.strip()
            rows.append((first, e_total, p_first, p_total, tokens, same))
            print(f"turn {i + 1}: engine first {first:.3f}s total {e_total:.2f}s | page first {p_first:.3f}s "
                  f"total {p_total:.2f}s | {tokens} tokens | same reply: {same}", flush=True)

        # two tabs at once: both are generated in one batch (the page's continuous batcher)
        clients = [Client(url, verbose=False) for _ in range(2)]
        results: dict[int, tuple[float, float, str]] = {}
        go = threading.Barrier(2)

        def run(k: int) -> None:
            go.wait()
            time.sleep(0.05 * k)  # the second arrives just after the first
            results[k] = page_turn(clients[k], PROMPTS[k], args.max_new_tokens)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop_server(proc)

    med = lambda xs: statistics.median(xs)  # noqa: E731
    e_first, e_total, p_first, p_total, tokens = (med([r[j] for r in rows]) for j in range(5))
    print("\n| path | first text, median | tokens/s, median | whole turn, median |")
    print("| --- | --- | --- | --- |")
    e_tps = med([r[4] / r[1] for r in rows])
    p_tps = med([r[4] / r[3] for r in rows])
    print(f"| engine (chat.py) | {e_first * 1000:.0f} ms | {e_tps:.1f} | {e_total:.2f} s |")
    print(f"| page (webui.py API) | {p_first * 1000:.0f} ms | {p_tps:.1f} | {p_total:.2f} s |")
    print(f"\npage / engine whole-turn time: {p_total / e_total:.3f}; identical replies: "
          f"{sum(r[5] for r in rows)}/{len(rows)}; tokens per turn (median): {tokens:.0f}")
    first_done = results[0][1]
    print(f"two tabs at once: first tab done after {first_done:.2f} s; second tab's first text after "
          f"{results[1][0]:.2f} s ({'before' if results[1][0] < first_done else 'after'} the first tab ended), "
          f"done after {results[1][1]:.2f} s")


if __name__ == "__main__":
    main()
