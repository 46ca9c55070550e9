#!/usr/bin/env python
"""Index a folder of documents for knowledge-base chat (BM25 + dense, hybrid).

    python scripts/build_index.py docs/ --index output/kb-index
    python scripts/build_index.py docs/ --index output/kb-index      # again: only changed files are re-embedded
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("docs", help="folder of .txt .md .pdf .docx .html files (read recursively)")
    p.add_argument("--index", required=True, help="index folder (created, or updated incrementally)")
    p.add_argument("--embedder", help="default: USE multilingual v3 (Chinese and English); minilm: the bundled "
                                      "all-MiniLM-L6-v2 (English only); or a sentence-transformers model")
    p.add_argument("--chunk-size", type=int, default=200, help="tokens per chunk")
    p.add_argument("--overlap", type=int, default=40, help="tokens carried over between chunks")
    p.add_argument("--fusion", default="score", choices=["score", "rrf", "weighted"],
                   help="saved as the index's default fusion (score: the side that found a real match wins)")
    p.add_argument("--fusion-weight", type=float, default=0.5, help="with --fusion score or weighted: the dense side's share")
    p.add_argument("--index-type", default="auto", choices=["auto", "flat", "hnsw"],
                   help="saved as the index's FAISS type: auto (exact below 20,000 chunks, HNSW from there), "
                        "flat (exact) or hnsw (approximate)")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.retrieval.hybrid import Embedder
        from qwen_kit.retrieval.index import build_index

        build_index(a.docs, a.index, Embedder(a.embedder), a.chunk_size, a.overlap,
                    fusion=a.fusion, weight=a.fusion_weight, index_type=a.index_type)

    run_cli(job, prog="build_index.py")


if __name__ == "__main__":
    main()
