#!/usr/bin/env python
"""Decode speed of the kit's GGUF exports in llama.cpp vs the kit's own transformers chat path,
same model, same prompt, same thread count.

    python bench/bench_gguf.py --model demo --quants f16 q8_0 --tokens 64 --repeats 3 --threads 2

Needs .venv-llama (`make llama-venv`). Every side generates exactly --tokens tokens greedily (no
stop token). llama.cpp: first-token time is the prompt's evaluation plus the first argmax, decode
tokens/s is counted from the first token to the last (llama_probe.py). transformers: the chat loop
as scripts/chat.py runs it (ChatEngine, streamed, as bench_chat.py measures it), with torch limited
to --threads. When llama_cpp is importable here too (`make llama-backend`), a third side per file:
the same chat loop over ``--backend llamacpp`` (the kit's sampling rule and detokenizer on
llama.cpp's logits), its context cleared before each run so the prompt is evaluated in full, as
bare llama.cpp evaluates it. Runs alternate between the sides so machine load hits them alike; medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--quants", nargs="+", default=["f16", "q8_0"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf-dir", help="keep the exports here (default: a temporary folder)")
    ap.add_argument("--sampled", action="store_true",
                    help="the kit's sides sample with chat.py's defaults (temperature 0.7, top-p 0.8, top-k 20, "
                         "penalty 1.05, seed 0) instead of greedy; bare llama.cpp stays argmax")
    args = ap.parse_args()

    import torch

    from qwen_kit.chat.engine import ChatEngine, GenerationSettings
    from qwen_kit.export.gguf import export_gguf
    from qwen_kit.export.llamacpp import run_llama
    from qwen_kit.model import LoadOptions, load_model

    torch.set_num_threads(args.threads)
    folder = Path(args.gguf_dir or tempfile.mkdtemp(prefix="bench-gguf-"))
    files = {}
    for quant in args.quants:
        path = folder / f"{Path(args.model).name}-{quant}.gguf"
        files[quant] = path if path.exists() else export_gguf(args.model, path, quant, modelfile=False).path

    from qwen_kit.generation.llamacpp import LlamaCppBackend, llama_cpp_available

    backends = {q: LlamaCppBackend(files[q], n_ctx=1024, threads=args.threads) for q in args.quants} \
        if llama_cpp_available() else {}
    loaded = load_model(args.model, LoadOptions(device="cpu", dtype="float32"), quiet=True)
    never = [loaded.model.config.vocab_size + 10]
    rule = {"seed": 0} if args.sampled else {"greedy": True}
    engine = ChatEngine(loaded.model, loaded.tokenizer, settings=GenerationSettings(max_new_tokens=args.tokens, **rule),
                        eos_token_ids=never)
    question = "Explain in detail how a library lends books to its members."
    prompt = engine.start_turn(question).prompt
    ids = loaded.tokenizer(prompt, add_special_tokens=False).input_ids

    def time_turn(chat: ChatEngine) -> tuple[Any, float, float]:
        """One reply through the chat loop: (turn, decode tokens/s after the first, first-token s)."""
        chat.reset()
        t0 = time.perf_counter()
        turn = chat.start_turn(question)
        first = None

        def on_piece(_piece: str) -> None:
            nonlocal first
            first = first or time.perf_counter()

        turn.run(on_piece)
        return turn, (turn.stats.new_tokens - 1) / (turn.stats.total_s - turn.stats.first_token_s), first - t0

    def run_kit() -> tuple[float, float]:
        return time_turn(engine)[1:]

    kit_settings = GenerationSettings(max_new_tokens=args.tokens, ignore_eos=True, **rule)
    kit_engines = {q: ChatEngine(None, b.tokenizer, settings=kit_settings, backend=b) for q, b in backends.items()}

    def run_kit_llama(quant: str) -> tuple[float, float]:
        backends[quant].llm.reset()  # no cached prefix: the whole prompt is evaluated, as bare llama.cpp does
        turn, rate, first = time_turn(kit_engines[quant])
        assert turn.stats.new_tokens == args.tokens, turn.stats
        return rate, first

    def run_gguf(quant: str) -> tuple[float, float]:
        rows = run_llama({"model": str(files[quant]), "threads": args.threads,
                          "bench": {"ids": ids, "n": args.tokens, "repeats": 1}})["bench"]
        return rows[0]["decode_tokens_per_s"], rows[0]["first_token_s"]

    run_kit()  # warm-up
    for quant in backends:
        run_kit_llama(quant)  # warm-up: page the mapped weights in, as bare llama.cpp's 2-token warm-up does
    sides = ["transformers", *args.quants, *(f"kit:{q}" for q in backends)]
    results: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for i in range(args.repeats):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            results[side].append(run_kit() if side == "transformers" else
                                 run_kit_llama(side[4:]) if side.startswith("kit:") else run_gguf(side))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"model: {args.model}, prompt {len(ids)} tokens, {args.tokens} new tokens, {args.repeats} alternating runs, "
          f"medians, kit sides {'sampled (chat.py defaults)' if args.sampled else 'greedy'}")
    print("| path | decode tokens/s | first token (ms) |")
    print("| --- | --- | --- |")
    for side in sides:
        rate = statistics.median(r for r, _ in results[side])
        first = statistics.median(f for _, f in results[side])
        name = ("kit chat loop, transformers fp32" if side == "transformers" else
                f"kit chat loop, --backend llamacpp, {side[4:]} export" if side.startswith("kit:") else
                f"bare llama.cpp, {side} export")
        print(f"| {name} | {rate:.1f} | {first * 1000:.0f} |")


if __name__ == "__main__":
    main()
