#!/usr/bin/env python
"""Long-term memory cost per turn with many stored rounds.

    python bench/bench_memory.py --rounds 10000 --turns 200

Per turn: one round appended to chat_history.txt (lock, write, fsync) and added to the index,
then one recall for the next message (embedding the query, BM25 + FAISS, fusion, prompt text).
The embedding of the new round itself is excluded (the goal's terms: its vector is given).
Also reported: start-up with the 10k-round file, first (embedding every round) and with the
index cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10000)
    ap.add_argument("--turns", type=int, default=200)
    args = ap.parse_args()

    import numpy as np

    from qwen_kit.chat.memory import LongTermMemory, MemoryRecord
    from qwen_kit.chat.prompt import Round
    from qwen_kit.model import load_model
    from qwen_kit.retrieval.hybrid import Embedder

    rng = np.random.default_rng(0)
    words = ("garden tide bread train sister car cello dentist river lamp winter coffee bike market "
             "book song mountain letter phone cat 花园 潮水 面包 火车 姐姐 汽车 自行车 书 茶 猫").split()
    def sentence(n: int = 14) -> str:
        return " ".join(rng.choice(words, n))

    def unit(n: int) -> "np.ndarray":
        v = rng.standard_normal((n, emb.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    emb = Embedder()
    tok = load_model("demo", quiet=True).tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chat_history.txt"
        stored = [MemoryRecord(f"r{i}", "2026-11-01 12:00:00", "s0", "bench", sentence(), sentence(8))
                  for i in range(args.rounds)]
        path.write_text("".join(r.line() for r in stored), encoding="utf-8")
        t0 = time.perf_counter()
        LongTermMemory(path, emb, tok, user="bench", quiet=True)  # first start: embeds every round
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        mem = LongTermMemory(path, emb, tok, user="bench", quiet=True)  # later starts: the index cache
        startup = time.perf_counter() - t0
        mem("warm up", [])

        append, recall, total = [], [], []
        for i in range(args.turns):
            r = Round(sentence(), sentence(8), time.time())
            v = unit(1)
            t0 = time.perf_counter()
            mem.remember([r], vectors=v)
            t1 = time.perf_counter()
            mem(sentence(8), [])
            t2 = time.perf_counter()
            append.append((t1 - t0) * 1000)
            recall.append((t2 - t1) * 1000)
            total.append((t2 - t0) * 1000)
    p = lambda xs: np.percentile(xs, [50, 95])  # noqa: E731
    print(f"machine: {os.cpu_count()} cores; {args.rounds:,} stored rounds; {args.turns} turns; all-MiniLM-L6-v2 on CPU")
    print("| per turn | p50 ms | p95 ms |\n| --- | --- | --- |")
    for name, xs in (("append (lock + write + fsync) + index add", append),
                     ("recall (query embedding + BM25 + FAISS + prompt text)", recall), ("total", total)):
        a, b = p(xs)
        print(f"| {name} | {a:.1f} | {b:.1f} |")
    print(f"\nstart-up with {args.rounds:,} stored rounds: {first:.1f} s the first time (embeds them all), "
          f"{startup:.2f} s with the index cache")


if __name__ == "__main__":
    main()
