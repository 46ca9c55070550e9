#!/usr/bin/env python
"""Built-in benchmark evaluator: scores multiple-choice datasets the way OpenCompass does, in the
main venv, fast enough to run during training.

    python scripts/eval.py --model Qwen/Qwen2.5-0.5B                       # the six OpenCompass configs
    python scripts/eval.py --model Qwen/Qwen2.5-0.5B --adapter output/my-lora/final --datasets ARC_c_clean_ppl
    python scripts/eval.py --model demo --datasets my_questions.jsonl      # question,A,B,C,D,answer

Data files are OpenCompass's (make eval-data); reports go to output/eval/<name>/.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    from qwen_kit.eval.datasets import DEFAULT_DATASETS
    from qwen_kit.eval.run import EvalConfig

    d = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=d.model, help="folder, hub id, platform model name, or demo")
    p.add_argument("--adapter", help="LoRA adapter folder, applied without merging")
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                   help=f"OpenCompass config names ({', '.join(DEFAULT_DATASETS)}) and/or custom .jsonl/.csv files")
    p.add_argument("--data-root", help="folder holding data/ (default: $COMPASS_DATA_CACHE, ., ~/.cache/opencompass)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens per text (OpenCompass --max-seq-len)")
    p.add_argument("--limit", type=int, help="at most this many items per dataset (a quick look)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--name", help="run name (default: the model's folder name)")
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: the dtype the folder declares, the one OpenCompass loads it in (same scores)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.eval.run import run_eval

        run_eval(EvalConfig(**vars(a)))

    run_cli(job, prog="eval.py")


if __name__ == "__main__":
    main()
