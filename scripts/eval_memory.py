#!/usr/bin/env python
"""Long-term memory evaluation: replay a scripted dialogue with a context small enough that early
rounds overflow into memory, then score the probes.

    python scripts/eval_memory.py --dialogue data/memory_dialogue.jsonl
    python scripts/eval_memory.py --dialogue data/memory_dialogue.jsonl --model demo --layout user system

Dialogue lines: {"user": ...} (answered by the model), {"user": ..., "assistant": ...} (scripted),
probe lines {"user": ..., "expect": [acceptable strings]}.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.service.options import add_real_path_options, real_path_config  # noqa: E402
from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dialogue", required=True, help="JSON Lines dialogue with probe lines")
    p.add_argument("--model", default="demo", help="model that answers (default: demo)")
    p.add_argument("--adapter")
    p.add_argument("--max-context", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--layout", nargs="+", default=["user"], choices=["user", "system"],
                   help="where memories go: quoted in the user turn, or the system message (several: compare)")
    p.add_argument("--top-k", type=int, default=3, help="memories recalled per turn")
    p.add_argument("--retrieval-only", action="store_true", help="score recall only; the model does not answer")
    p.add_argument("--embedder")
    add_real_path_options(p, "replay it as chat.py --memory does: every default, probes left in the conversation")
    p.add_argument("--out", default="output/memory_eval")
    a = p.parse_args()

    def job() -> None:
        from pathlib import Path

        from qwen_kit.chat.evaluate import eval_memory, read_dialogue, write_table
        from qwen_kit.model import LoadOptions, load_model
        from qwen_kit.retrieval.hybrid import Embedder

        dialogue = read_dialogue(a.dialogue)
        loaded = load_model(a.model, LoadOptions(adapter=a.adapter))
        embedder = Embedder(a.embedder)
        results = [] if a.only_real_path else [
            eval_memory(dialogue, loaded, embedder, a.max_context, a.max_new_tokens, layout,
                        answers=not a.retrieval_only, top_k=a.top_k) for layout in a.layout]
        rows, details = [r.row() for r in results], {r.layout: r.details for r in results}
        if a.real_path or a.only_real_path:
            from qwen_kit.chat.evaluate import real_path_memory

            cfg = real_path_config(a, a.model, max_context=a.max_context)
            real = real_path_memory(cfg, loaded, embedder, dialogue)
            rows.append(real.row("recalled from memory"))
            details["real path"] = real.details
        title = f"Long-term memory: {a.dialogue}, model {a.model}, context {a.max_context} tokens"
        report = write_table(Path(a.out), "memory_eval", title, rows, details)
        print(report.read_text(encoding="utf-8"))

    run_cli(job, prog="eval_memory.py")


if __name__ == "__main__":
    main()
