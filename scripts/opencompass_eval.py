#!/usr/bin/env python
"""Run OpenCompass (in its own venv, .venv-eval) on the six benchmark configs or a custom file.

    python scripts/opencompass_eval.py Qwen/Qwen2.5-0.5B                          # all six
    python scripts/opencompass_eval.py ./output/merged --gpus 1 --workers 4 --datasets ARC_c_clean_ppl
    python scripts/opencompass_eval.py Qwen/Qwen2.5-1.5B --adapter output/lora/final
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    from qwen_kit.eval.datasets import DEFAULT_DATASETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder, hub id or platform model name")
    p.add_argument("--adapter", help="LoRA adapter folder (OpenCompass --peft-path)")
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    p.add_argument("--gpus", type=int, help="GPUs per task (default: 1 with CUDA, 0 on CPU)")
    p.add_argument("--workers", type=int, default=1, help="tasks run side by side (--max-num-workers)")
    p.add_argument("--data-root", help="folder holding data/ (default: $COMPASS_DATA_CACHE, ., ~/.cache/opencompass)")
    p.add_argument("--out", default="output/opencompass", help="OpenCompass work folder")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    a = p.parse_args()

    def job() -> int:
        from qwen_kit.eval.opencompass import run_opencompass

        return run_opencompass(a.model, a.datasets, a.adapter, a.gpus, a.workers, a.out, a.data_root, a.dry_run)

    run_cli(job, prog="opencompass_eval.py")


if __name__ == "__main__":
    main()
