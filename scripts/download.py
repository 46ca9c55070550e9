#!/usr/bin/env python
"""Download a model into the platform's model folder (AutoDL: /root/autodl-tmp/models).

    python scripts/download.py Qwen/Qwen2.5-1.5B-Instruct                 # ModelScope if installed, else HF
    HF_ENDPOINT=https://hf-mirror.com python scripts/download.py Qwen/Qwen2.5-3B --source hf
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id, e.g. Qwen/Qwen2.5-1.5B-Instruct")
    p.add_argument("--source", default="auto", choices=["auto", "modelscope", "hf"])
    p.add_argument("--dest", help="parent folder (default: the platform's first model folder)")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.model.download import download_model

        print(download_model(a.model, a.source, a.dest))

    run_cli(job, prog="download.py")


if __name__ == "__main__":
    main()
