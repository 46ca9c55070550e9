#!/usr/bin/env python
"""Fine-tune a model on instruction data: full SFT, LoRA or QLoRA.

    python scripts/sft.py --config configs/sft_demo.yaml
    python scripts/sft.py --config configs/sft_qwen2.5_0.5b.yaml --data train.csv --per-device-batch 4
    torchrun --nproc_per_node=4 scripts/sft.py --config configs/sft_qwen2.5_0.5b.yaml
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.config import add_dataclass_args, load_config  # noqa: E402
from qwen_kit.entry import run_cli  # noqa: E402
from qwen_kit.train.config import TrainConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe (configs/*.yaml); flags override it")
    add_dataclass_args(p, TrainConfig)
    a = vars(p.parse_args())
    recipe = a.pop("config")

    def job() -> None:
        from qwen_kit.train.sft import run_sft

        run_sft(load_config(TrainConfig, recipe, a))

    run_cli(job, prog="sft.py")


if __name__ == "__main__":
    main()
