#!/usr/bin/env python
"""Mend model folders saved by earlier versions of the kit (or by transformers 5 directly) so
that transformers 4 (OpenCompass), transformers 5 and vLLM read the same model. Only JSON
files change; weights are never touched.

    python scripts/portable.py output/sft-demo output/merged-1.5b
    python scripts/portable.py output/sft-demo --dry-run     # show what would change
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="model, checkpoint or adapter folders")
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.model.portable import repair_folders

        repair_folders(a.folders, a.dry_run)

    run_cli(job, prog="portable.py")


if __name__ == "__main__":
    main()
