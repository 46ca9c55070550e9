#!/usr/bin/env python
"""Trainable-parameter share and peak memory: full fine-tuning vs LoRA vs QLoRA, same model and data.

    python bench/bench_lora.py --model demo --steps 3

Each variant runs scripts/sft.py in its own process (so peak memory is that run's own) and
reads its run_summary.json. On CPU, peak memory is the process's peak resident set; on a
GPU, torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", default=str(ROOT / "data" / "sample_alpaca.json"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["full", "lora", "qlora"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, work, True)  # runs save models and checkpoints: gigabytes
    rows = []
    for variant in args.variants:
        out = work / variant
        cmd = [sys.executable, str(ROOT / "scripts" / "sft.py"), "--model", args.model, "--data", args.data,
               "--finetune", variant, "--output-dir", str(out), "--max-steps", str(args.steps),
               "--per-device-batch", "1", "--max-len", "256", "--eval-share", "0", "--save-steps", "1000",
               "--learning-rate", "1e-4"]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "QWEN_KIT_CACHE": str(work / "cache")})
        if res.returncode != 0:
            print(f"{variant} failed:\n{res.stderr[-2000:]}")
            continue
        s = json.loads((out / "run_summary.json").read_text())
        rows.append((variant, s["trainable_params"], s["total_params"], s["peak_memory_mb"], s["real_tokens_per_s"]))
    print(f"model {args.model}, {args.steps} steps, micro-batch 1 x 256-token bins, {os.cpu_count()} cores")
    print("| fine-tuning | trainable params | share | peak memory (MB) | tokens/s |\n| --- | --- | --- | --- | --- |")
    for v, t, n, m, tps in rows:
        print(f"| {v} | {t:,} | {t / n:.2%} | {m:.0f} | {tps:.0f} |")


if __name__ == "__main__":
    main()
