#!/usr/bin/env python
"""Evaluate knowledge-base retrieval (and optionally answers) on a QA file.

    python scripts/eval_rag.py --docs data/knowledge --qa data/knowledge_qa.jsonl
    python scripts/eval_rag.py --docs data/knowledge --qa data/knowledge_qa.jsonl --model demo
    python scripts/eval_rag.py --docs data/knowledge --qa data/knowledge_qa.jsonl --qa data/knowledge_qa_hard.jsonl

Recall@1/@5 of BM25 alone, dense alone and hybrid, overall and per kind of question (worded
like the document, paraphrased, cross-lingual) and the language it is asked in.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.chat.knowledge import LAYOUTS as KB_LAYOUTS  # noqa: E402
from qwen_kit.service.options import add_real_path_options, real_path_config  # noqa: E402
from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", required=True, action="append",
                   help="documents folder or saved index (repeat: one knowledge base over several, e.g. with distractors)")
    p.add_argument("--qa", required=True, action="append",
                   help='JSON Lines: {"question", "answers": [...], "doc", "kind" (optional)} (repeat: several files)')
    p.add_argument("--model", help="also score answers with this model, with and without retrieval")
    p.add_argument("--embedder", help="default: USE multilingual v3; minilm: the bundled all-MiniLM-L6-v2")
    p.add_argument("--fusion", choices=["score", "rrf", "weighted"], help="hybrid fusion (default: score)")
    p.add_argument("--fusion-weight", type=float, help="the dense side's share (default 0.5)")
    p.add_argument("--top-k", type=int, default=4)
    add_real_path_options(p, "ask every question as chat.py --rag does (its defaults, /reset between questions)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--kb-layout", choices=KB_LAYOUTS, help="real path: the chat's --kb-layout (default: the chat's default)")
    p.add_argument("--kb-min-ratio", type=float, help="real path: the chat's --kb-min-ratio")
    p.add_argument("--context-in", choices=["user", "system"], help="real path: the chat's --context-in")
    p.add_argument("--chat-top-k", type=int, help="real path: the chat's --top-k (default: the chat's default)")
    p.add_argument("--out", default="output/rag_eval")
    a = p.parse_args()

    def job() -> None:
        from pathlib import Path

        from qwen_kit.retrieval.evaluate import MODES, gold_ranks, read_qa, recall_by_group, retrieval_metrics, write_report
        from qwen_kit.retrieval.hybrid import Embedder

        qa = [row for path in a.qa for row in read_qa(path)]
        title = " + ".join(a.qa)
        if a.real_path or a.only_real_path:
            from qwen_kit.chat.pipeline import open_knowledge
            from qwen_kit.chat.evaluate import real_path_rag, write_table
            from qwen_kit.model import load_model

            changes = {k: v for k, v in (("kb_layout", a.kb_layout), ("kb_min_ratio", a.kb_min_ratio),
                                          ("context_in", a.context_in),
                                          ("top_k", a.chat_top_k), ("fusion", a.fusion),
                                          ("fusion_weight", a.fusion_weight)) if v is not None}
            cfg = real_path_config(a, a.model or "demo", **changes)
            lm = load_model(cfg.model)
            real = real_path_rag(cfg, lm, open_knowledge(a.docs, Embedder(a.embedder), cfg), qa)
            report = write_table(Path(a.out), "rag_real_path", f"Knowledge base, real path: {title}, model {cfg.model}",
                                 [real.row("gold retrieved")], real.details)
            print(report.read_text(encoding="utf-8"))
            if a.only_real_path:
                return
        from qwen_kit.chat.pipeline import open_knowledge

        from qwen_kit.chat.pipeline import ChatConfig

        retriever = open_knowledge(a.docs, Embedder(a.embedder), ChatConfig(fusion=a.fusion, fusion_weight=a.fusion_weight))
        ranks = {mode: gold_ranks(retriever, qa, mode) for mode in MODES}
        metrics = retrieval_metrics(retriever, qa, ranks=ranks)
        groups = recall_by_group(qa, ranks)
        answers = None
        if a.model:
            from qwen_kit.chat.engine import ChatEngine, GenerationSettings
            from qwen_kit.chat.knowledge import KnowledgeContext
            from qwen_kit.retrieval.evaluate import answer_accuracy
            from qwen_kit.model import load_model

            lm = load_model(a.model)
            settings = GenerationSettings(max_new_tokens=a.max_new_tokens, greedy=True)
            plain = lambda: ChatEngine(lm.model, lm.tokenizer, settings=settings, eos_token_ids=lm.eos_token_ids)  # noqa: E731
            def rag(placement: str):
                return lambda: ChatEngine(lm.model, lm.tokenizer, settings=settings, eos_token_ids=lm.eos_token_ids,
                                          context_fn=KnowledgeContext(retriever, lm.tokenizer, a.top_k),
                                          context_placement=placement)

            answers = {"without retrieval": answer_accuracy(plain, qa),
                       "with retrieval, sources in the system message": answer_accuracy(rag("system"), qa),
                       "with retrieval, sources quoted in the user turn": answer_accuracy(rag("user"), qa)}
        report = write_report(Path(a.out), metrics, answers, groups)
        print(report.read_text(encoding="utf-8"))

    run_cli(job, prog="eval_rag.py")


if __name__ == "__main__":
    main()
