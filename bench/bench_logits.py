#!/usr/bin/env python
"""The LM head only where a token is trained on (the default) against every position
(--all-logits, transformers' way), through scripts/sft.py as a user runs it.

    python bench/bench_logits.py --data ../shared/data/alpaca_en_demo.json --rows 64

Each run is its own `scripts/sft.py` process (so its peak memory is its own), with the kit's
defaults (reply-only loss, length-grouped batches) but the data, batch size and one epoch;
the two settings alternate over --repeats rounds. Figures are what each run reports in
run_summary.json: real tokens/s, peak memory (resident set on CPU, allocated on a GPU),
the first logged loss and the final train loss.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"trained positions (default)": [], "every position (--all-logits)": ["--all-logits"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="alpaca-style JSON rows")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--loss", default="response", choices=["response", "full"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-logits-"))
    atexit.register(shutil.rmtree, work, True)  # runs save models and checkpoints: gigabytes
    rows = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.rows]
    data = work / "rows.json"
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "QWEN_KIT_CACHE": str(work / "cache")}
    names = list(SETTINGS)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(args.repeats):
        for n in (names if i % 2 == 0 else names[::-1]):
            out = work / f"run-{len(results[n])}-{names.index(n)}"
            cmd = [sys.executable, str(ROOT / "scripts/sft.py"), "--model", args.model, "--data", str(data),
                   "--output-dir", str(out), "--per-device-batch", str(args.batch), "--loss", args.loss,
                   "--epochs", "1", "--eval-share", "0", "--save-steps", "100000", "--logging-steps", "1",
                   *SETTINGS[n]]
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results[n].append(json.loads((out / "run_summary.json").read_text()))

    first = results[names[0]][0]
    print(f"\n{len(rows)} rows, {first['real_tokens']} real tokens, {first['global_step']} steps; model {args.model}, "
          f"batch {args.batch}, {args.loss} loss, one epoch; scripts/sft.py on {os.cpu_count()} CPU cores; "
          f"medians of {args.repeats} alternating runs")
    print("| LM head at | real tokens/s | peak memory (MiB) | first step loss | final train loss |\n"
          "| --- | --- | --- | --- | --- |")
    med = {}
    for n in names:
        rs = results[n]
        med[n] = statistics.median(r["real_tokens_per_s"] for r in rs)
        step1 = [h["loss"] for h in rs[0]["log_history"] if "loss" in h][0]
        print(f"| {n} | {med[n]:.1f} | {statistics.median(r['peak_memory_mb'] for r in rs):.0f} | {step1:.4f} | "
              f"{statistics.median(r['train_loss'] for r in rs):.4f} |")
    print(f"trained positions / every position: {med[names[0]] / med[names[1]]:.2f}x real tokens/s")


if __name__ == "__main__":
    main()
