#!/usr/bin/env python
"""How each consumer reads a saved model folder: transformers 5 (this venv), transformers 4
(.venv-tf4 from `make tf4-venv`, or OpenCompass's .venv-eval) and vLLM's config reader where
vLLM is installed (or QWEN_KIT_VLLM_PYTHON names its Python). Exit code 1 when any disagrees.

    python scripts/check_model.py output/sft-demo
    python scripts/check_model.py output/sft-demo --logits     # also compare logits (loads the weights)
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a saved model folder (config.json)")
    p.add_argument("--logits", action="store_true", help="load the weights under each reader and compare logits")
    p.add_argument("--json", help="also write the full reports to this file")
    a = p.parse_args()

    def job() -> int:
        from qwen_kit.model.readers import print_check

        return print_check(a.folder, a.logits, a.json)

    run_cli(job, prog="check_model.py")


if __name__ == "__main__":
    main()
