#!/usr/bin/env python
"""Persona evaluation: ask each probe in a fresh conversation and count answers in character.

    python scripts/eval_persona.py --persona data/personas/lighthouse_keeper.yaml \
        --probes data/personas/lighthouse_keeper_probes.jsonl --layout second fields

Probe lines: {"user": ..., "expect_any": [strings, one must appear], "forbid": [strings, none may appear]}.
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
    p.add_argument("--persona", required=True, help="persona YAML/JSON or Character Card V2")
    p.add_argument("--probes", required=True, help="JSON Lines probes")
    p.add_argument("--model", default="demo", help="model that answers (default: demo)")
    p.add_argument("--adapter")
    p.add_argument("--layout", nargs="+", default=["second"], choices=["second", "fields"],
                   help="persona as prose addressed to the model, or labelled card fields (several: compare)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--user", default="User", help="the name {{user}} stands for")
    add_real_path_options(p, "ask every probe in one conversation, as chat.py --persona does (its defaults)")
    p.add_argument("--out", default="output/persona_eval")
    a = p.parse_args()

    def job() -> None:
        from pathlib import Path

        from qwen_kit.chat.evaluate import eval_persona, read_probes, write_table
        from qwen_kit.chat.persona import load_persona
        from qwen_kit.model import LoadOptions, load_model

        persona = load_persona(a.persona)
        probes = read_probes(a.probes)
        loaded = load_model(a.model, LoadOptions(adapter=a.adapter))
        results = [] if a.only_real_path else [
            eval_persona(persona, probes, loaded, layout, a.max_new_tokens, a.user) for layout in a.layout]
        rows, details = [r.row() for r in results], {r.layout: r.details for r in results}
        if a.real_path or a.only_real_path:
            from qwen_kit.chat.pipeline import open_knowledge
            from qwen_kit.chat.evaluate import real_path_persona

            cfg = real_path_config(a, a.model, user=a.user if a.user != "User" else "default")
            docs = None
            if persona.documents:
                from qwen_kit.retrieval.hybrid import Embedder

                docs = open_knowledge(persona.documents, Embedder(None), cfg)
            real = real_path_persona(cfg, loaded, persona, probes, docs)
            rows.append(real.row("fact in the prompt"))
            details["real path"] = real.details
        title = f"Persona {persona.name}: {a.probes}, model {a.model}"
        report = write_table(Path(a.out), "persona_eval", title, rows, details)
        print(report.read_text(encoding="utf-8"))

    run_cli(job, prog="eval_persona.py")


if __name__ == "__main__":
    main()
