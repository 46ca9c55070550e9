#!/usr/bin/env python
"""What this machine has (torch, CUDA, GPUs, flash-attn, bitsandbytes, liger-kernel, DeepSpeed,
the platform and its folders) and short self-checks of the training and chat paths on it.
Writes a JSON report to attach to a bug report; exit code 1 when a check failed.

    python scripts/doctor.py                      # report in ./doctor_report.json
    python scripts/doctor.py --report /tmp/r.json
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", default="doctor_report.json", help="where to write the JSON report")
    a = p.parse_args()

    def job() -> int:
        from qwen_kit.doctor import run_doctor

        report = run_doctor(a.report)
        return 1 if any(c["status"] == "failed" for c in report["checks"]) else 0

    run_cli(job, prog="doctor.py")


if __name__ == "__main__":
    main()
