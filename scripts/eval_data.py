#!/usr/bin/env python
"""Download the six benchmark datasets (and the contamination annotations the *_clean_* configs
need) once, where OpenCompass and scripts/eval.py look: $COMPASS_DATA_CACHE or ~/.cache/opencompass.

    python scripts/eval_data.py                       # then copy the folder to offline machines
    python scripts/eval_data.py --dest /root/autodl-tmp/opencompass --dry-run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    default = os.environ.get("COMPASS_DATA_CACHE") or str(Path.home() / ".cache" / "opencompass")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", default=default, help=f"folder that gets data/ (default: {default})")
    p.add_argument("--dry-run", action="store_true", help="list what would be downloaded")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.eval.opencompass import fetch_data

        print(fetch_data(a.dest, a.dry_run))

    run_cli(job, prog="eval_data.py")


if __name__ == "__main__":
    main()
