#!/usr/bin/env python
"""Decode speed of the chat loop (ChatEngine streaming, as scripts/chat.py runs it) vs a bare
model.generate, same prompt.

    python bench/bench_chat.py --model demo --tokens 128 --repeats 8
    python bench/bench_chat.py --model qwen-coder-0.5b --dtype bfloat16 --tokens 64 --repeats 3

Both sides generate exactly --tokens tokens greedily (end ids made unreachable), runs
alternate so machine load hits both alike, and medians are reported. Time to first
token is measured from the user's message to the first streamed piece (prompt
rendering and trimming included).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--dtype", default="auto", help="auto (fp32 on a CPU), float32, bfloat16 or float16")
    args = ap.parse_args()

    import torch

    from qwen_kit.chat.engine import ChatEngine, GenerationSettings
    from qwen_kit.model import LoadOptions, load_model

    loaded = load_model(args.model, LoadOptions(dtype=args.dtype), quiet=True)
    never = [loaded.model.config.vocab_size + 10]  # an id the model cannot produce
    settings = GenerationSettings(max_new_tokens=args.tokens, greedy=True)
    question = "Explain in detail how a library lends books to its members."
    engine = ChatEngine(loaded.model, loaded.tokenizer, settings=settings, eos_token_ids=never)
    prompt = engine.start_turn(question).prompt
    inputs = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)

    class FirstTokenClock:
        """A streamer that only notes when the first new token arrives (costs nothing)."""

        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # call 1 is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    def run_bare() -> float:
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, eos_token_id=never, pad_token_id=0, streamer=clock,
                                        **settings.generate_kwargs(inputs["input_ids"].shape[1]))
        n = out.shape[1] - inputs["input_ids"].shape[1]
        return (n - 1) / (time.perf_counter() - clock.first)

    def run_chat() -> tuple[float, float]:
        engine.reset()
        t0 = time.perf_counter()
        turn = engine.start_turn(question)
        first = None

        def on_piece(_piece: str) -> None:
            nonlocal first
            first = first or time.perf_counter()

        turn.run(on_piece)  # the terminal chat's path: generation in this thread, pieces to a callback
        decode_s = turn.stats.total_s - turn.stats.first_token_s  # first token to the end, as for bare
        return (turn.stats.new_tokens - 1) / decode_s, first - t0

    def run_iter() -> float:
        engine.reset()
        turn = engine.start_turn(question)
        for _piece in turn:  # generation in a worker thread, pieces through a queue (servers, UIs)
            pass
        return (turn.stats.new_tokens - 1) / (turn.stats.total_s - turn.stats.first_token_s)

    run_bare(), run_chat()  # warm-up: first-call allocations hit neither side
    bare, chat, threaded, ttft = [], [], [], []
    for i in range(args.repeats):
        order = (0, 1, 2) if i % 2 == 0 else (2, 1, 0)  # alternate who goes first
        for side in order:
            if side == 0:
                bare.append(run_bare())
            elif side == 1:
                rate, first = run_chat()
                chat.append(rate)
                ttft.append(first)
            else:
                threaded.append(run_iter())

    b, c = statistics.median(bare), statistics.median(chat)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {loaded.precision.device}, dtype {loaded.precision.dtype}")
    print(f"model: {args.model}, prompt {inputs['input_ids'].shape[1]} tokens, {args.tokens} new tokens, "
          f"{args.repeats} alternating runs, medians")
    print("| path | decode tokens/s (after the first token) |")
    print("| --- | --- |")
    print(f"| bare model.generate | {b:.1f} |")
    print(f"| chat loop (ChatEngine, streamed) | {c:.1f} |")
    print(f"| chat turn iterated (worker thread + queue) | {statistics.median(threaded):.1f} |")
    print(f"ratio chat/bare: {c / b:.3f} (goal >= 0.95); iterated/bare: {statistics.median(threaded) / b:.3f}")
    print(f"time to first visible text (chat loop, message in -> first piece out): p50 {statistics.median(ttft) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
