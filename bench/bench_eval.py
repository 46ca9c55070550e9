#!/usr/bin/env python
"""Built-in evaluator vs OpenCompass: items/s on the same model and data, side by side, and
whether they chose the same answers.

    python bench/bench_eval.py --model demo --items 200

Both run as a user runs them (one command each, start-up included): `scripts/eval.py` in the
main venv and `opencompass` from .venv-eval (make eval-venv), on a generated custom MCQ file.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--items", type=int, default=200)
    args = ap.parse_args()

    from qwen_kit.eval.opencompass import opencompass_exe
    from qwen_kit.model.portable import make_tokenizer_portable
    from qwen_kit.model.resolve import resolve_model

    model = resolve_model(args.model).path
    facts = [("What is the capital of France?", ["Paris", "Rome", "Berlin", "Madrid"], "A"),
             ("Which planet is known as the red planet?", ["Venus", "Mars", "Jupiter", "Saturn"], "B"),
             ("What is H2O commonly called?", ["salt", "air", "water", "sand"], "C"),
             ("How many legs does a spider have?", ["six", "ten", "four", "eight"], "D"),
             ("Which animal barks?", ["dog", "cat", "cow", "fish"], "A")]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mcq = tmp / "bench_mcq.jsonl"
        with open(mcq, "w") as f:
            for i in range(args.items):
                q, opts, a = facts[i % len(facts)]
                order = list(range(4))
                rng.shuffle(order)
                row = {"question": q, **{"ABCD"[k]: opts[j] for k, j in enumerate(order)}, "answer": "ABCD"[order.index("ABCD".index(a))]}
                f.write(json.dumps(row) + "\n")
        tok = tmp / "tokenizer"  # OpenCompass's transformers 4 needs a portable tokenizer_config
        subprocess.run(["cp", "-r", str(model), str(tok)], check=True)
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
        same = sum(str(theirs[str(i)]["prediction"]) == ours[i]["prediction"] for i in ours)
        acc_ours = 100 * sum(o["prediction"] == o["gold"] for o in ours.values()) / len(ours)
        acc_theirs = 100 * sum(str(t["prediction"]) == str(t["gold"]) for t in theirs.values()) / len(theirs)
    n = args.items
    print(f"machine: {os.cpu_count()} cores, CPU; model {args.model}; {n} custom MCQ items (4 options)")
    print("| evaluator | seconds (whole command) | items/s | accuracy |\n| --- | --- | --- | --- |")
    print(f"| built-in (scripts/eval.py) | {builtin_s:.1f} | {n / builtin_s:.2f} | {acc_ours:.2f} |")
    print(f"| OpenCompass 0.5.4 | {oc_s:.1f} | {n / oc_s:.2f} | {acc_theirs:.2f} |")
    print(f"speed ratio {oc_s / builtin_s:.2f}x (goal >= 2x); same choice on {same}/{n} items")


if __name__ == "__main__":
    main()
