#!/usr/bin/env python
"""Built-in evaluator vs OpenCompass: items/s on the same model and data, side by side, and
whether they agree item by item.

    python bench/bench_eval.py --model demo --items 200
    python bench/bench_eval.py --model /tmp/ft-qwen --data data/mcq_bilingual.jsonl --json out.json

Both run as a user runs them (one command each, start-up included): `scripts/eval.py` in the
main venv and `opencompass` from .venv-eval (make eval-venv), on a custom MCQ file: generated
(English, five questions with shuffled options, ``--items`` of them) or ``--data FILE`` (its
first ``--items`` rows, all of them when ``--items`` is not given).

Agreement is reported per item: the same chosen option, and every option's perplexity on both
sides (max |Δ|). An item whose two best options lie within ``--tie`` of each other on both sides
is a numerical tie (either choice is right); items whose decision margin is under 100× the max
|Δ| are listed as near-ties, the ones a numerical difference could flip.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generated_mcq(path: Path, items: int) -> None:
    """The English file this bench always used: five questions, options shuffled (seed 0)."""
    facts = [("What is the capital of France?", ["Paris", "Rome", "Berlin", "Madrid"], "A"),
             ("Which planet is known as the red planet?", ["Venus", "Mars", "Jupiter", "Saturn"], "B"),
             ("What is H2O commonly called?", ["salt", "air", "water", "sand"], "C"),
             ("How many legs does a spider have?", ["six", "ten", "four", "eight"], "D"),
             ("Which animal barks?", ["dog", "cat", "cow", "fish"], "A")]
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(items):
            q, opts, a = facts[i % len(facts)]
            order = list(range(4))
            rng.shuffle(order)
            row = {"question": q, **{"ABCD"[k]: opts[j] for k, j in enumerate(order)},
                   "answer": "ABCD"[order.index("ABCD".index(a))]}
            f.write(json.dumps(row) + "\n")


def compare(ours: dict[int, dict], theirs: dict[str, dict], tie: float) -> dict:
    """Per item: both choices, every option's score on both sides, and the margins."""
    rows = []
    for i in sorted(ours):
        o, t = ours[i], theirs[str(i)]
        t_scores = {lab[len("label: "):]: float(v["PPL"]) for lab, v in t.items() if lab.startswith("label: ")}
        labels = list(o["scores"])
        deltas = {lab: abs(o["scores"][lab] - t_scores[lab]) for lab in labels}

        def margin(scores: dict[str, float]) -> float:
            best = sorted(scores.values())
            return best[1] - best[0] if len(best) > 1 else float("inf")

        rows.append({"index": i, "ours": o["prediction"], "opencompass": str(t["prediction"]), "gold": o["gold"],
                     "max_delta": max(deltas.values()), "worst_label": max(deltas, key=deltas.get),
                     "margin_ours": margin(o["scores"]), "margin_opencompass": margin(t_scores),
                     "scores_ours": o["scores"], "scores_opencompass": t_scores})
    worst = max(rows, key=lambda r: r["max_delta"])
    ties = [r["index"] for r in rows if r["margin_ours"] < tie and r["margin_opencompass"] < tie]
    differ = [r["index"] for r in rows if r["ours"] != r["opencompass"]]
    near = [r["index"] for r in rows if min(r["margin_ours"], r["margin_opencompass"]) < 100 * worst["max_delta"]]
    return {"items": len(rows), "same_choice": len(rows) - len(differ), "differ": differ,
            "differ_not_ties": [i for i in differ if i not in ties], "ties": ties, "near_ties": near,
            "max_abs_delta": worst["max_delta"], "max_delta_at": [worst["index"], worst["worst_label"]],
            "smallest_margin": min(min(r["margin_ours"], r["margin_opencompass"]) for r in rows), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--items", type=int, default=None, help="generated items (default 200), or the first N rows of --data")
    ap.add_argument("--data", default=None, help="a custom MCQ .jsonl (question, A..D, answer) instead of the generated one")
    ap.add_argument("--tie", type=float, default=1e-5, help="best two options closer than this on both sides: a tie")
    ap.add_argument("--json", default=None, help="write the per-item comparison here")
    args = ap.parse_args()

    from qwen_kit.eval.opencompass import opencompass_exe
    from qwen_kit.model.portable import make_tokenizer_portable
    from qwen_kit.model.resolve import resolve_model

    model = resolve_model(args.model).path
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mcq = tmp / "bench_mcq.jsonl"
        if args.data:
            rows = Path(args.data).read_text(encoding="utf-8").splitlines()
            mcq.write_text("\n".join(rows[: args.items or len(rows)]) + "\n", encoding="utf-8")
            source = f"{args.data} ({len(rows[: args.items or len(rows)])} of {len(rows)} rows)"
        else:
            generated_mcq(mcq, args.items or 200)
            source = "generated English (5 questions, shuffled options)"
        n = len(mcq.read_text(encoding="utf-8").splitlines())
        # OpenCompass's transformers 4 needs a portable tokenizer_config: a copy of the folder's
        # small files, the weights linked (both sides read this same folder)
        tok = tmp / "tokenizer"
        tok.mkdir()
        for f in Path(model).iterdir():
            if f.is_file() and f.suffix in (".safetensors", ".bin") and f.stat().st_size > 10_000_000:
                (tok / f.name).symlink_to(f.resolve())
            elif f.is_file():
                (tok / f.name).write_bytes(f.read_bytes())
        make_tokenizer_portable(tok)

        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "eval.py"), "--model", str(tok), "--datasets", str(mcq),
                        "--out", str(tmp / "builtin"), "--name", "run"], check=True, capture_output=True)
        builtin_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([str(opencompass_exe(ROOT / ".venv-eval")), "--hf-type", "base", "--hf-path", str(tok),
                        "--custom-dataset-path", str(mcq), "--custom-dataset-data-type", "mcq",
                        "--custom-dataset-infer-method", "ppl", "--hf-num-gpus", "0", "--max-seq-len", "2048",
                        "--batch-size", "8", "-w", str(tmp / "oc")], check=True, capture_output=True, cwd=tmp)
        oc_s = time.perf_counter() - t0

        ours = {json.loads(x)["index"]: json.loads(x) for x in open(tmp / "builtin" / "run" / "predictions" / "bench_mcq.jsonl")}
        theirs = json.load(open(glob.glob(str(tmp / "oc" / "*" / "predictions" / "*" / "bench_mcq.json"))[0]))
        report = compare(ours, theirs, args.tie)
        acc_ours = 100 * sum(o["prediction"] == o["gold"] for o in ours.values()) / len(ours)
        acc_theirs = 100 * sum(str(t["prediction"]) == str(t["gold"]) for t in theirs.values()) / len(theirs)
    load_after = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU; load average (1/5/15 min) "
          f"{'/'.join(f'{x:.2f}' for x in load_before)} before, {'/'.join(f'{x:.2f}' for x in load_after)} after")
    print(f"model {args.model}; data: {source}; {n} items")
    print("| evaluator | seconds (whole command) | items/s | accuracy |\n| --- | --- | --- | --- |")
    print(f"| built-in (scripts/eval.py) | {builtin_s:.1f} | {n / builtin_s:.2f} | {acc_ours:.2f} |")
    print(f"| OpenCompass 0.5.4 | {oc_s:.1f} | {n / oc_s:.2f} | {acc_theirs:.2f} |")
    print(f"speed ratio {oc_s / builtin_s:.2f}x (goal >= 2x); same choice on {report['same_choice']}/{n} items")
    item, label = report["max_delta_at"]
    print(f"max |Δ perplexity| over all {n} items and options: {report['max_abs_delta']:.2e} (item {item}, option {label}); "
          f"smallest decision margin {report['smallest_margin']:.2e}")
    print(f"different choices: {report['differ'] or 'none'}; of which not ties (both sides' best two within "
          f"{args.tie:g}): {report['differ_not_ties'] or 'none'}")
    print(f"ties: {report['ties'] or 'none'}; near-ties (margin < 100x max |Δ|): {report['near_ties'] or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "data": source, "builtin_s": builtin_s, "opencompass_s": oc_s,
                                               "load_before": load_before, "load_after": load_after, **report}, indent=1,
                                              ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
