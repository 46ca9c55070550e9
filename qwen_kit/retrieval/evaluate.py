"""Scoring retrieval (recall@k, MRR per mode) and, optionally, answers with and without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen_kit.jsonl import read_jsonl
from qwen_kit.retrieval.hybrid import HybridRetriever

MODES = ("bm25", "dense", "hybrid")


def read_qa(path: str) -> list[dict[str, Any]]:
    """QA lines ``{"question", "answers": [...], "doc"}``; a bad line is a UserError naming it."""
    def check(row: dict[str, Any]) -> str | None:
        if not row.get("question") or not row.get("doc") or not isinstance(row.get("answers"), list):
            return "needs question, answers (a list) and doc"
        return None

    return [row for _, row in read_jsonl(path, "QA", check)]


def retrieval_metrics(retriever: HybridRetriever, qa: list[dict[str, Any]], ks=(1, 3, 5)) -> dict[str, dict[str, float]]:
    """Per mode: recall@k (the gold file among the top k distinct files) and MRR."""
    out = {}
    for mode in MODES:
        hits_at = {k: 0 for k in ks}
        rr = 0.0
        for item in qa:
            files = list(dict.fromkeys(h.chunk.file for h in retriever.search(item["question"], k=20, mode=mode)))
            rank = files.index(item["doc"]) + 1 if item["doc"] in files else None
            for k in ks:
                hits_at[k] += int(rank is not None and rank <= k)
            rr += 1.0 / rank if rank else 0.0
        out[mode] = {**{f"recall@{k}": hits_at[k] / len(qa) for k in ks}, "mrr": rr / len(qa)}
    return out


def answer_accuracy(engine_factory, qa: list[dict[str, Any]]) -> float:
    """Share of questions whose answer contains an acceptable string (case-insensitive)."""
    good = 0
    for item in qa:
        engine = engine_factory()
        answer = engine.reply(item["question"]).lower()
        good += any(a.lower() in answer for a in item["answers"])
    return good / len(qa)


def write_report(out_dir: Path, metrics: dict[str, dict[str, float]], answers: dict[str, float] | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(next(iter(metrics.values())))
    lines = ["| retriever | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{metrics[m][c]:.3f}" for c in cols) + " |" for m in metrics]
    if answers:
        lines += ["", "| answers | share containing an acceptable string |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in answers.items()]
    (out_dir / "rag_eval.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(cols))
    for i, m in enumerate(metrics):
        ax.bar(x + (i - 1) * 0.27, [metrics[m][c] for c in cols], width=0.27, label=m)
    ax.set_xticks(x, cols)
    ax.set_ylim(0, 1.05)
    ax.set_title("retrieval on the QA set")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "rag_eval.png", dpi=120)
    plt.close(fig)
    return out_dir / "rag_eval.md"
