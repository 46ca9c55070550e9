#!/usr/bin/env python
"""Kaggle from your machine: upload folders as datasets, push a ready-to-run kernel, read results.

    python scripts/kaggle.py upload DIR owner/slug [--message M] [--title T] [--license apache-2.0]
    python scripts/kaggle.py push owner/kernel-slug --job rag --model Qwen/Qwen2.5-1.5B-Instruct --docs owner/docs [--dry-run]
    python scripts/kaggle.py status owner/kernel-slug
    python scripts/kaggle.py output owner/kernel-slug [--dest output/kaggle/owner_kernel-slug/result]

Credentials stay with the kaggle CLI (KAGGLE_API_TOKEN, KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload", help="create or version a dataset from a folder")
    up.add_argument("dir")
    up.add_argument("slug", help="owner/dataset-slug")
    up.add_argument("--message", default="", help="version note (later uploads)")
    up.add_argument("--title", help="6-50 characters (default: from the slug)")
    up.add_argument("--license", default="apache-2.0", help="exactly one Kaggle licence name")
    up.add_argument("--dry-run", action="store_true", help="write the metadata, print the command, upload nothing")
    push = sub.add_parser("push", help="build a kernel folder and push it")
    push.add_argument("kernel", help="owner/kernel-slug")
    push.add_argument("--job", default="chat", choices=["chat", "rag", "memory", "persona", "eval", "lora"])
    push.add_argument("--model", default="Qwen/Qwen2.5-1.5B-Instruct",
                      help="--model inside the kernel: hub id (needs internet), a mounted model's name, or demo")
    push.add_argument("--adapter", help="dataset owner/slug holding a LoRA adapter")
    push.add_argument("--docs", help="dataset owner/slug of documents (rag), training data (lora) or personas")
    push.add_argument("--persona", help="persona file in the kit (data/personas/...) or in DOCS")
    push.add_argument("--message", action="append", default=[], help="a line of the scripted conversation (repeat)")
    push.add_argument("--messages-file", help="text file, one user message per line")
    push.add_argument("--dataset", action="append", default=[], help="another dataset to attach (repeat)")
    push.add_argument("--kaggle-model", action="append", default=[],
                      help="a Kaggle model to attach: owner/model/framework/variation/version (repeat)")
    push.add_argument("--no-internet", action="store_true", help="run without internet (inputs must be attached)")
    push.add_argument("--cpu", action="store_true", help="no GPU")
    push.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                      help="default: 4-bit for models of 1.5B and up on the T4")
    push.add_argument("--max-new-tokens", type=int, default=256)
    push.add_argument("--out", help="kernel folder (default: output/kaggle/<owner>_<slug>)")
    push.add_argument("--dry-run", action="store_true", help="write the folder and print the command only")
    st = sub.add_parser("status", help="kaggle kernels status")
    st.add_argument("kernel")
    out = sub.add_parser("output", help="download a kernel's /kaggle/working")
    out.add_argument("kernel")
    out.add_argument("--dest")
    a = p.parse_args()

    def job() -> None:
        from pathlib import Path

        from qwen_kit.kaggle import publish as kp
        from qwen_kit.errors import UserError

        folder = Path("output") / "kaggle" / a.kernel.replace("/", "_") if hasattr(a, "kernel") else None
        if a.command == "upload":
            kp.upload_dataset(a.dir, a.slug, a.message, a.title, a.license, a.dry_run)
        elif a.command == "push":
            messages = list(a.message)
            if a.messages_file:
                try:
                    messages += [ln.strip() for ln in Path(a.messages_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
                except (OSError, UnicodeDecodeError) as err:
                    raise UserError(f"--messages-file {a.messages_file}: cannot read it as UTF-8 text ({err})") from None
            spec = kp.KernelSpec(a.kernel, a.job, a.model, a.adapter, a.docs, a.persona, messages, a.dataset,
                                 a.kaggle_model, internet=not a.no_internet, gpu=not a.cpu,
                                 max_new_tokens=a.max_new_tokens, load_in_4bit=a.load_in_4bit)
            kp.push_kernel(spec, a.out or folder, a.dry_run)
        elif a.command == "status":
            kp.kernel_status(a.kernel)
        else:
            kp.kernel_output(a.kernel, a.dest or folder / "result")

    run_cli(job, prog="kaggle.py")


if __name__ == "__main__":
    main()
