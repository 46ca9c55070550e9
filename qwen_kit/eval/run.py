"""The built-in evaluator: load a model (and adapter), score datasets, write reports."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qwen_kit.errors import UserError
from qwen_kit.eval.datasets import DEFAULT_DATASETS, McqItem, load_items
from qwen_kit.eval.scoring import Scored, score_items


@dataclass
class EvalConfig:
    """Everything ``scripts/eval.py`` accepts."""

    model: str = "demo"
    adapter: str | None = None
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    data_root: str | None = None
    batch_size: int = 8
    max_len: int = 2048
    limit: int | None = None  # items per dataset (a quick look; the full sets give the real score)
    out: str = "output/eval"
    name: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    load_in_4bit: bool | None = None


def check_datasets(names: Sequence[str]) -> None:
    """Unknown names and malformed custom files fail here, with the file and line."""
    from qwen_kit.eval.datasets import BUILTIN

    if not names:
        raise UserError("no datasets given")
    for name in names:
        if name not in BUILTIN:  # a custom file is read in full here; built-in data after the model loads
            load_items(name)


def collect_items(names: Sequence[str], tokenizer: Any, data_root: str | None = None, max_len: int = 2048,
                  limit: int | None = None) -> dict[str, list[McqItem]]:
    """Items per requested name (every dataset is read before any scoring starts, so a missing
    file fails in seconds, not after an hour)."""
    count = lambda text: len(tokenizer(text, add_special_tokens=True)["input_ids"])  # noqa: E731
    out = {}
    for name in names:
        items = load_items(name, data_root, max_len, count)
        if limit:
            per: dict[str, list[McqItem]] = {}
            for it in items:
                per.setdefault(it.dataset, []).append(it)
            items = [it for group in per.values() for it in group[:limit]]
        out[name] = items
    return out


def opencompass_dtype(folder: str | Path) -> str:
    """The dtype OpenCompass 0.5.4 loads a model folder in, on CPU and GPU alike: the one its
    ``config.json`` declares (``torch_dtype``, or ``dtype`` as transformers 5 writes it), float32
    when it declares none. Qwen2.5's hub checkpoints declare bfloat16; the kit's fine-tunes and
    merges on CPU float32. Scoring in another dtype moves every perplexity by ~1e-2 on a 0.5B
    model, enough to flip close items."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    declared = config.get("torch_dtype") or config.get("dtype")
    return declared if declared in ("float32", "bfloat16", "float16") else "float32"


def summarize(name: str, scored: list[Scored]) -> list[dict[str, Any]]:
    """Rows of (dataset, items, accuracy %). MMLU adds a ``mmlu`` row: the mean over subjects,
    as OpenCompass's summariser reports it."""
    per: dict[str, list[Scored]] = {}
    for s in scored:
        per.setdefault(s.item.dataset, []).append(s)
    rows = [{"dataset": ds, "items": len(ss), "accuracy": 100.0 * sum(s.correct for s in ss) / len(ss)}
            for ds, ss in per.items()]
    if name == "mmlu_ppl" and rows:
        rows.append({"dataset": "mmlu", "items": sum(r["items"] for r in rows),
                     "accuracy": sum(r["accuracy"] for r in rows) / len(rows)})
    return rows


def evaluate(model: Any, tokenizer: Any, items: dict[str, list[McqItem]], batch_size: int = 8, max_len: int = 2048,
             progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, list[Scored]]]:
    rows, scored = [], {}
    for name, its in items.items():
        scored[name] = score_items(model, tokenizer, its, batch_size, max_len, progress, desc=name)
        rows += summarize(name, scored[name])
    return rows, scored


def run_eval(cfg: EvalConfig) -> Path:
    """Score ``cfg.datasets`` with ``cfg.model``; write ``summary.csv``, ``summary.md``,
    ``predictions/<dataset>.jsonl`` and ``run.json`` under ``cfg.out/<name>``."""
    from qwen_kit.model import LoadOptions, load_model
    from qwen_kit.model.load import pick_device

    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    from qwen_kit.model.resolve import resolve_model

    check_datasets(cfg.datasets)  # before minutes of model loading
    dtype = cfg.dtype
    if dtype == "auto" and not cfg.load_in_4bit and pick_device(cfg.device)[0] == "cpu":
        # on a CPU, OpenCompass's numbers need OpenCompass's dtype (the folder's own); on a GPU the
        # kit's choice stands (fp16 on a T4, which has no bf16; no fp32 doubling the memory), and
        # scores move in the third decimal at most
        dtype = opencompass_dtype(resolve_model(cfg.model).path)
        print(f"scoring in {dtype}, the dtype {cfg.model} declares (as OpenCompass loads it)", file=sys.stderr)
    loaded = load_model(cfg.model, LoadOptions(cfg.adapter, cfg.load_in_4bit, dtype, cfg.device))
    items = collect_items(cfg.datasets, loaded.tokenizer, cfg.data_root, cfg.max_len, cfg.limit)
    started = time.perf_counter()
    rows, scored = evaluate(loaded.model, loaded.tokenizer, items, cfg.batch_size, cfg.max_len)
    seconds = time.perf_counter() - started
    n_items = sum(len(v) for v in items.values())
    name = cfg.name or Path(cfg.model.rstrip("/")).name + (f"+{Path(cfg.adapter.rstrip('/')).name}" if cfg.adapter else "")
    out = Path(cfg.out) / name
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for ds_name, ss in scored.items():
        stem = Path(ds_name).stem if ds_name.endswith((".jsonl", ".csv")) else ds_name
        with open(out / "predictions" / f"{stem}.jsonl", "w", encoding="utf-8") as f:
            for s in ss:
                f.write(json.dumps({"dataset": s.item.dataset, "index": s.item.index, "prediction": s.prediction,
                                    "gold": s.item.gold, "scores": dict(zip(s.item.labels, s.scores))},
                                   ensure_ascii=False) + "\n")
    write_summary(out, name, rows)
    (out / "run.json").write_text(json.dumps({**asdict(cfg), "name": name, "items": n_items, "seconds": round(seconds, 2),
                                              "items_per_s": round(n_items / seconds, 2) if seconds else None,
                                              "precision": asdict(loaded.precision)}, indent=1), encoding="utf-8")
    print((out / "summary.md").read_text(encoding="utf-8"))
    print(f"{n_items} items in {seconds:.1f} s ({n_items / max(seconds, 1e-9):.1f} items/s); reports in {out}",
          file=sys.stderr)
    return out


def write_summary(out: Path, name: str, rows: list[dict[str, Any]]) -> None:
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["dataset", "items", "accuracy"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "accuracy": f"{r['accuracy']:.2f}"})
    lines = [f"| dataset | items | {name} |", "| --- | --- | --- |"]
    lines += [f"| {r['dataset']} | {r['items']} | {r['accuracy']:.2f} |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def compare_runs(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Several runs' ``summary.csv`` side by side: ``compare.md`` and a bar chart ``compare.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tables: dict[str, dict[str, float]] = {}
    for run in runs:
        path = Path(run) / "summary.csv"
        if not path.is_file():
            raise UserError(f"{run} has no summary.csv; pass folders written by scripts/eval.py")
        with open(path, encoding="utf-8") as f:
            tables[Path(run).name] = {r["dataset"]: float(r["accuracy"]) for r in csv.DictReader(f)}
    datasets = list(dict.fromkeys(d for t in tables.values() for d in t if not d.startswith("lukaemon_mmlu_")))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| dataset | " + " | ".join(tables) + " |", "|" + " --- |" * (len(tables) + 1)]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(f"{t[d]:.2f}" if d in t else "-" for t in tables.values()) + " |")
    (out / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(datasets) * max(1, len(tables) / 2)), 4))
    x = np.arange(len(datasets))
    width = 0.8 / max(len(tables), 1)
    for i, (run, t) in enumerate(tables.items()):
        ax.bar(x + (i - (len(tables) - 1) / 2) * width, [t.get(d, 0.0) for d in datasets], width, label=run)
    ax.set_xticks(x, datasets, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("benchmark accuracy by model")
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=120)
    plt.close(fig)
    return out / "compare.md"
