#!/usr/bin/env python
"""Put several evaluation runs side by side: a markdown table and a bar chart.

    python scripts/compare.py output/eval/Qwen2.5-0.5B output/eval/Qwen2.5-0.5B+my-lora --out output/eval/compare
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="folders written by scripts/eval.py (each has summary.csv)")
    p.add_argument("--out", default="output/eval/compare")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.eval.run import compare_runs

        print(compare_runs(a.runs, a.out).read_text(encoding="utf-8"))

    run_cli(job, prog="compare.py")


if __name__ == "__main__":
    main()
