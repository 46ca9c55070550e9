#!/usr/bin/env python
"""Run a sweep of fine-tuning variants and write results.md, results.csv and plots.

    python scripts/experiment.py configs/exp_batch.yaml
    python scripts/experiment.py configs/exp_loss.yaml --max-steps 200 --model Qwen/Qwen2.5-0.5B
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.config import add_dataclass_args  # noqa: E402
from qwen_kit.entry import run_cli  # noqa: E402
from qwen_kit.train.config import TrainConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML (configs/exp_*.yaml)")
    p.add_argument("--out", help="experiment folder (default: <output>/experiments/<name>)")
    add_dataclass_args(p, TrainConfig)
    a = vars(p.parse_args())
    sweep, out = a.pop("sweep"), a.pop("out")

    def job() -> None:
        from qwen_kit.train.experiment import run_experiment

        root = run_experiment(sweep, a, out)
        print(f"results: {root / 'results.md'}")

    run_cli(job, prog="experiment.py")


if __name__ == "__main__":
    main()
