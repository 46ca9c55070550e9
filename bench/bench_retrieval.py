#!/usr/bin/env python
"""Retrieval speed: index build vs the embedder's raw encode, and hybrid query latency.

    python bench/bench_retrieval.py --text ../shared/data/wiki_demo.txt --build-chunks 2000 --sizes 10000 100000
    python bench/bench_retrieval.py --text ../shared/data/wiki_demo.txt --embedder minilm   # the earlier default

Build: the same texts go through the embedder alone and through HybridRetriever.add (BM25
segmentation + embedding + FAISS), side by side; at each latency size, the time to add the
chunks with their vectors given (jieba/BM25 + FAISS, no embedding) is printed too, so a whole
build of N chunks takes about N / (build chunks/s) + that. Latency: corpora of N chunks cut from the text;
BM25 is real; the FAISS vectors of the large corpora are random unit vectors (a flat
inner-product search costs the same whatever the numbers are), so building a 100k index does
not take half an hour of embedding on 2 cores. Each query includes embedding the query.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--build-chunks", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--hnsw-from", type=int, default=50000, help="also time HNSW at sizes from this many chunks")
    ap.add_argument("--no-build", action="store_true", help="skip the index-build comparison")
    ap.add_argument("--embedder", help="default: the kit's default (USE multilingual v3); minilm: all-MiniLM-L6-v2")
    args = ap.parse_args()

    import numpy as np

    from qwen_kit.retrieval.chunking import Chunk, split_sentences
    from qwen_kit.retrieval.hybrid import Embedder, HybridRetriever

    sentences = [s for s in split_sentences(Path(args.text).read_text(encoding="utf-8")) if len(s) > 40]
    def make(n: int) -> list[Chunk]:
        return [Chunk(f"doc{i // 50}.txt#{i}", f"doc{i // 50}.txt", i % 50, "",
                      " ".join(sentences[(i * 3 + j) % len(sentences)] for j in range(3))) for i in range(n)]

    emb = Embedder(args.embedder)
    chunks = make(args.build_chunks)
    texts = [c.text for c in chunks]
    emb.encode(texts[:64])  # warm-up

    def time_raw() -> float:
        t0 = time.perf_counter()
        emb.encode(texts)
        return len(texts) / (time.perf_counter() - t0)

    def time_build() -> float:
        t0 = time.perf_counter()
        r = HybridRetriever(emb)
        r.add(chunks)
        r.search("warm up the indexes", k=5)
        return len(texts) / (time.perf_counter() - t0)

    print(f"machine: {os.cpu_count()} cores; embedder {emb.name} on CPU ({emb.dim} dims); fusion "
          f"{HybridRetriever(emb).fusion}; chunks of 3 sentences from {args.text}")
    if not args.no_build:
        # alternate, best of two each: neither side pays the other's warm-up
        raw_a, built_a, built_b, raw_b = time_raw(), time_build(), time_build(), time_raw()
        raw, built = max(raw_a, raw_b), max(built_a, built_b)
        print(f"| index build ({args.build_chunks} chunks) | chunks/s |\n| --- | --- |")
        print(f"| embedder.encode alone | {raw:.0f} |\n| HybridRetriever.add + first search (BM25 + embed + FAISS) | {built:.0f} |")
        print(f"ratio {built / raw:.2f} (goal >= 0.8)\n")

    rng = np.random.default_rng(0)
    queries = [" ".join(s.split()[:8]) for s in rng.choice(sentences, args.queries)]
    print("| chunks | hybrid p50 ms | hybrid p95 ms | bm25 p50 ms | dense p50 ms | BM25 + FAISS build s |\n"
          "| --- | --- | --- | --- | --- | --- |")
    # flat and HNSW side by side at each size (same corpus, same queries) for the crossover
    runs = [(n, kind) for n in args.sizes for kind in ("flat", "hnsw") if kind == "flat" or n >= args.hnsw_from]
    for n, kind in runs:
        big = make(n)
        vecs = rng.standard_normal((n, emb.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        r = HybridRetriever(emb, index_type=kind)
        t0 = time.perf_counter()
        r.add(big, vectors=vecs)  # jieba/BM25 tokens of every chunk; the embedding is the build table's rate
        r.search("warm up", k=5)  # builds the BM25 postings and the FAISS index
        build_s = time.perf_counter() - t0
        timings = {"hybrid": [], "bm25": [], "dense": []}
        for q in queries:
            for mode in timings:
                t0 = time.perf_counter()
                r.search(q, k=5, mode=mode)
                timings[mode].append((time.perf_counter() - t0) * 1000)
        p = {m: np.percentile(v, [50, 95]) for m, v in timings.items()}
        print(f"| {n:,} ({kind}) | {p['hybrid'][0]:.1f} | {p['hybrid'][1]:.1f} | {p['bm25'][0]:.1f} | {p['dense'][0]:.1f} "
              f"| {build_s:.1f} |")


if __name__ == "__main__":
    main()
