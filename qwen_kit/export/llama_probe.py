"""Run by path inside the llama.cpp venv (``.venv-llama``), never imported by the kit: it imports
nothing from qwen_kit. Reads one JSON request on stdin, loads the GGUF file in llama.cpp (through
llama-cpp-python), writes one JSON answer on stdout.

Request keys (all but ``model`` optional)::

    model      path of the .gguf file
    threads    CPU threads (default 1: llama.cpp's threads meet at a barrier after every operation, and
               on a busy 2-core machine two of them made a tiny model's step take 0.4 s instead of 0.1 ms)
    vocab_only load the tokenizer alone
    tokenize   [text, ...]           -> tokens: [[id, ...], ...]  (BOS/EOS as the file says, specials parsed)
    logits     [[id, ...], ...]      -> logits: [[[float] * n_vocab] * len(ids), ...]
    greedy     [{"ids": [...], "n": N}, ...] -> greedy: [[id] * N, ...] (argmax, no stop token)
                                     and greedy_logits: [[float] * N, ...] (each chosen token's logit)
    bench      {"ids": [...], "n": N, "repeats": R} -> bench: [{"first_token_s", "decode_tokens_per_s"}, ...]
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import numpy as np
    from llama_cpp import Llama

    req = json.load(sys.stdin)
    threads = int(req.get("threads", 1))
    lengths = [len(x) for x in req.get("logits", [])] + [len(g["ids"]) + g["n"] for g in req.get("greedy", [])]
    if "bench" in req:
        lengths.append(len(req["bench"]["ids"]) + req["bench"]["n"])
    llm = Llama(model_path=req["model"], n_ctx=max([512] + [n + 8 for n in lengths]), n_threads=threads,
                n_threads_batch=threads, logits_all=bool(req.get("logits")), vocab_only=bool(req.get("vocab_only")),
                verbose=False)
    out: dict = {"n_vocab": llm.n_vocab()}
    out["tokens"] = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in req.get("tokenize", [])]

    def fresh(ids: list[int]) -> None:
        llm.reset()  # n_tokens = 0: eval drops the cache of any earlier case
        llm.eval(ids)

    out["logits"] = []
    for ids in req.get("logits", []):
        fresh(ids)
        out["logits"].append(np.asarray(llm.scores[: len(ids)], dtype=np.float32).tolist())

    def greedy(ids: list[int], n: int, clock: list[float] | None = None,
               chosen: list[float] | None = None) -> list[int]:
        fresh(ids)
        new: list[int] = []
        for _ in range(n):
            # the last evaluated position's logits, read from llama.cpp (llm.scores only holds them with logits_all)
            row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            token = int(np.argmax(row))
            if clock is not None:
                clock.append(time.perf_counter())
            if chosen is not None:
                chosen.append(float(row[token]))
            new.append(token)
            llm.eval([token])
        return new

    out["greedy"], out["greedy_logits"] = [], []
    for g in req.get("greedy", []):
        chosen: list[float] = []
        out["greedy"].append(greedy(g["ids"], g["n"], chosen=chosen))
        out["greedy_logits"].append(chosen)
    if "bench" in req:
        b, rows = req["bench"], []
        greedy(b["ids"], 2)  # warm-up: page the mapped weights in and size the buffers, as a running chat has
        for _ in range(b.get("repeats", 3)):
            clock: list[float] = []
            start = time.perf_counter()
            greedy(b["ids"], b["n"], clock)
            end = time.perf_counter()
            rows.append({"first_token_s": clock[0] - start, "decode_tokens_per_s": (len(clock) - 1) / max(clock[-1] - clock[0], 1e-9),
                         "end_s": end - start})
        out["bench"] = rows
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
