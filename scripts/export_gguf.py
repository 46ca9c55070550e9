#!/usr/bin/env python
"""Export a model (a kit folder, a LoRA adapter on its base, demo, a hub id) to one GGUF file for
llama.cpp, ollama and LM Studio, with an ollama Modelfile beside it.

    python scripts/export_gguf.py output/sft-demo --out output/sft-demo-f16.gguf
    python scripts/export_gguf.py Qwen/Qwen2.5-0.5B-Instruct --adapter output/lora --out output/mine-q8_0.gguf --quant q8_0
    ollama create mine -f output/mine-q8_0.Modelfile && ollama run mine
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.entry import run_cli  # noqa: E402
from qwen_kit.export.gguf import QUANTS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder, adapter folder, hub id or 'demo'")
    p.add_argument("--adapter", help="LoRA adapter folder merged into MODEL before export")
    p.add_argument("--out", required=True, help="the .gguf file to write (its Modelfile goes beside it)")
    p.add_argument("--quant", default="f16", choices=list(QUANTS),
                   help="tensor type of the weight matrices (norms stay F32; below 8 bits the embedding stays Q8_0)")
    p.add_argument("--no-modelfile", action="store_true", help="write the GGUF file only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = p.parse_args()

    def job() -> None:
        from qwen_kit.export.gguf import export_gguf

        export_gguf(a.model, a.out, a.quant, adapter=a.adapter, modelfile=not a.no_modelfile, overwrite=a.overwrite)

    run_cli(job, prog="export_gguf.py")


if __name__ == "__main__":
    main()
