#!/usr/bin/env python
"""Merge a LoRA adapter into its base model and save a plain Hugging Face model.

    python scripts/merge_lora.py output/qwen2.5-1.5b-lora-response --out output/merged-1.5b
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", help="adapter folder (adapter_config.json)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--base", help="base model (default: the one named in adapter_config.json)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.model.merge import merge_adapter

        merge_adapter(a.adapter, a.out, a.base, a.dtype)

    run_cli(job, prog="merge_lora.py")


if __name__ == "__main__":
    main()
