"""Ablations as one command: run variants of a recipe with everything else fixed, then
write a results table (Markdown + CSV) and plots (loss curves, final eval loss)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import yaml

from platforms import current_platform
from qwen_kit.config import load_config
from qwen_kit.errors import UserError
from qwen_kit.train.config import TrainConfig

COLUMNS = ["variant", "per_device_batch", "grad_accum", "loss", "system", "steps", "final_train_loss",
           "eval_loss", "eval_reply_loss", "padding_efficiency", "real_tokens_per_s", "peak_memory_mb",
           "train_seconds"]


def load_sweep(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sweep file {p} does not exist; examples are configs/exp_*.yaml")
    sweep = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(sweep.get("variants"), list) or not sweep["variants"]:
        raise UserError(f"{p}: needs a non-empty 'variants' list of {{name: ..., option: value}}")
    for i, v in enumerate(sweep["variants"], start=1):
        if not isinstance(v, dict) or "name" not in v:
            raise UserError(f"{p}: variant {i} needs a 'name'")
    return sweep


def run_experiment(sweep_path: str, overrides: dict[str, Any] | None = None, out_dir: str | None = None) -> Path:
    """Run every variant of the sweep in turn and report. Returns the experiment folder."""
    from qwen_kit.train.sft import run_sft

    sweep = load_sweep(sweep_path)
    name = sweep.get("name") or Path(sweep_path).stem
    root = Path(out_dir) if out_dir else current_platform().output_dir() / "experiments" / name
    root.mkdir(parents=True, exist_ok=True)
    rows, histories = [], {}
    base = {**(sweep.get("overrides") or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for variant in sweep["variants"]:
        vname = variant["name"]
        settings = {**base, **{k: v for k, v in variant.items() if k != "name"},
                    "output_dir": str(root / vname), "run_name": f"{name}-{vname}", "overwrite": True}
        cfg = load_config(TrainConfig, sweep.get("base"), settings)
        print(f"[{name}] variant {vname}", file=sys.stderr)
        summary = run_sft(cfg)
        histories[vname] = summary["log_history"]
        losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
        rows.append({"variant": vname, "per_device_batch": cfg.per_device_batch, "grad_accum": cfg.grad_accum,
                     "loss": cfg.loss, "system": "none" if cfg.no_system_prompt else (cfg.system_prompt or "template"),
                     "steps": summary["global_step"], "final_train_loss": losses[-1] if losses else None,
                     "eval_loss": summary["eval_loss"], "eval_reply_loss": summary["eval_reply_loss"],
                     "padding_efficiency": summary["padding_efficiency"],
                     "real_tokens_per_s": summary["real_tokens_per_s"],
                     "peak_memory_mb": summary["peak_memory_mb"], "train_seconds": summary["train_seconds"]})
        # --bench (the built-in evaluator during training): the final scores join the table
        last = next((h for h in reversed(summary["log_history"]) if any(k.startswith("bench/") for k in h)), {})
        rows[-1].update({k: v for k, v in last.items() if k.startswith("bench/")})
    write_report(root, name, rows, histories)
    return root


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def write_report(root: Path, name: str, rows: list[dict], histories: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("bench/")]
    columns = COLUMNS + bench
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Experiment: {name}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    lines += ["", "![loss curves](loss_curves.png)", "", "![final eval loss on reply tokens](final_eval_loss.png)", ""]
    if bench:
        lines += ["![benchmark accuracy](benchmarks.png)", ""]
    (root / "results.md").write_text("\n".join(lines), encoding="utf-8")
    if bench:
        import numpy as np

        fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(bench) * len(rows) / 2), 3.5))
        x = np.arange(len(bench))
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            ax.bar(x + (i - (len(rows) - 1) / 2) * width, [r.get(b) or 0.0 for b in bench], width, label=r["variant"])
        ax.set_xticks(x, [b.split("/", 1)[1] for b in bench])
        ax.set_ylabel("accuracy (%) at the end")
        ax.set_ylim(0, 100)
        ax.set_title(f"{name}: benchmark accuracy per variant")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / "benchmarks.png", dpi=120)
        plt.close(fig)

    fig = plot_loss_curves(name, histories)
    fig.savefig(root / "loss_curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["variant"] for r in rows]
    # the one metric every variant shares: a full-loss variant's own eval loss counts prompt tokens
    values = [r["eval_reply_loss"] if r["eval_reply_loss"] is not None else float("nan") for r in rows]
    bars = ax.bar(names, values, color="#4C72B0")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylabel("final eval loss, reply tokens")
    ax.set_title(f"{name}: final eval loss on reply tokens (every variant alike)")
    fig.tight_layout()
    fig.savefig(root / "final_eval_loss.png", dpi=120)
    plt.close(fig)


def plot_loss_curves(name: str, histories: dict[str, list[dict]]) -> Any:
    """The training loss of every logged step and the eval points, one colour per variant.

    Short runs are the common case (a few steps on a CPU): every point gets a marker and the
    step axis whole numbers; variants that train alike overlap, so each has its own marker
    and line style; the legend sits outside the axes, where it hides no curve."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    markers, styles = "osD^vP*X", ["-", "--", "-.", ":"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (vname, hist) in enumerate(histories.items()):
        pts = [(h["step"], h["loss"]) for h in hist if "loss" in h]
        ev = [(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h]
        if pts:
            line, = ax.plot(*zip(*pts), marker=markers[i % len(markers)], markersize=4,
                            linestyle=styles[i % len(styles)], label=f"{vname} train")
            if ev:  # each variant's own labels: compare variants on the reply-token bars instead
                ax.plot(*zip(*ev), marker=markers[i % len(markers)], markersize=9, linestyle=":",
                        markerfacecolor="none", markeredgewidth=1.5, color=line.get_color(),
                        label=f"{vname} eval (own labels)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{name}: loss curves")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig
