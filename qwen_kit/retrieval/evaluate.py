"""Scoring retrieval (recall@k, MRR per mode) and, optionally, answers with and without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwen_kit.jsonl import read_jsonl
from qwen_kit.retrieval.hybrid import HybridRetriever, mostly_cjk

MODES = ("bm25", "dense", "hybrid")


KINDS = ("worded", "paraphrase", "crosslingual")  # how a question relates to its document's words


def read_qa(path: str) -> list[dict[str, Any]]:
    """QA lines ``{"question", "answers": [...], "doc"}`` with an optional ``kind`` (worded,
    the default: reuses the document's words; paraphrase: few shared words; crosslingual:
    asked in the other language); a bad line is a UserError naming it."""
    def check(row: dict[str, Any]) -> str | None:
        if not row.get("question") or not row.get("doc") or not isinstance(row.get("answers"), list):
            return "needs question, answers (a list) and doc"
        if row.get("kind", "worded") not in KINDS:
            return f"kind must be one of {', '.join(KINDS)}"
        return None

    return [row for _, row in read_jsonl(path, "QA", check)]


def question_language(question: str) -> str:
    return "zh" if mostly_cjk(question) else "en"


def gold_ranks(retriever: HybridRetriever, qa: list[dict[str, Any]], mode: str, depth: int = 20) -> list[int | None]:
    """Per question: the rank of the gold file among the distinct files of the top ``depth`` chunks."""
    ranks = []
    for item in qa:
        files = list(dict.fromkeys(h.chunk.file for h in retriever.search(item["question"], k=depth, mode=mode)))
        ranks.append(files.index(item["doc"]) + 1 if item["doc"] in files else None)
    return ranks


def retrieval_metrics(retriever: HybridRetriever, qa: list[dict[str, Any]], ks=(1, 3, 5),
                      ranks: dict[str, list[int | None]] | None = None) -> dict[str, dict[str, float]]:
    """Per mode: recall@k (the gold file among the top k distinct files) and MRR."""
    out = {}
    for mode in MODES:
        found = ranks[mode] if ranks else gold_ranks(retriever, qa, mode)
        out[mode] = {**{f"recall@{k}": sum(r is not None and r <= k for r in found) / len(qa) for k in ks},
                     "mrr": sum(1.0 / r for r in found if r) / len(qa)}
    return out


def recall_by_group(qa: list[dict[str, Any]], ranks: dict[str, list[int | None]],
                    ks=(1, 5)) -> list[dict[str, Any]]:
    """Rows ``{kind, language, n, <mode> recall@k ...}``: per kind of question and the language it
    is asked in (a cross-lingual question in zh is about an English document), then per kind."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(qa):
        kind = item.get("kind", "worded")
        for key in ((kind, question_language(item["question"])), (kind, "all")):
            groups.setdefault(key, []).append(i)
    rows = []
    for (kind, lang), idx in sorted(groups.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1] == "all", kv[0][1])):
        row: dict[str, Any] = {"kind": kind, "language": lang, "n": len(idx)}
        for mode in MODES:
            for k in ks:
                row[f"{mode} recall@{k}"] = sum(ranks[mode][i] is not None and ranks[mode][i] <= k for i in idx) / len(idx)
        rows.append(row)
    return rows


def answer_accuracy(engine_factory, qa: list[dict[str, Any]]) -> float:
    """Share of questions whose answer contains an acceptable string (case-insensitive)."""
    good = 0
    for item in qa:
        engine = engine_factory()
        answer = engine.reply(item["question"]).lower()
        good += any(a.lower() in answer for a in item["answers"])
    return good / len(qa)


def write_report(out_dir: Path, metrics: dict[str, dict[str, float]], answers: dict[str, float] | None,
                 groups: list[dict[str, Any]] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(next(iter(metrics.values())))
    lines = ["| retriever | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{metrics[m][c]:.3f}" for c in cols) + " |" for m in metrics]
    if groups:
        cols_g = [c for c in groups[0] if c not in ("kind", "language", "n")]
        lines += ["", "| questions | asked in | n | " + " | ".join(cols_g) + " |", "|" + " --- |" * (len(cols_g) + 3)]
        lines += [f"| {g['kind']} | {g['language']} | {g['n']} | " + " | ".join(f"{g[c]:.2f}" for c in cols_g) + " |"
                  for g in groups]
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
