#!/usr/bin/env python
"""Training throughput through the user's path: run_sft (what scripts/sft.py calls) with
packed bins, length-grouped padded batches (the default) and random padded batches.

    python bench/bench_train.py --data ../shared/data/alpaca_en_demo.json --examples 256

Every layout trains the same freshly initialised small Qwen2 (saved once through the kit,
with the demo model's tokenizer) on the same rows for one epoch, alternating layouts over
--repeats rounds. The figures are what each run reports in run_summary.json: real tokens/s
(no padding), tokens computed/s and padding efficiency counted from the batches it trained on.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

LAYOUTS = {"random": dict(packing=False, group_by_length=False), "grouped": dict(packing=False),
           "packed": dict(packing=True)}


def small_model(folder: Path, hidden: int, layers: int) -> Path:
    """A random Qwen2 of Qwen2.5's shape family (64-wide heads, RoPE 1e6) with the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from qwen_kit.model.portable import save_model
    from qwen_kit.model.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("demo").path)
    torch.manual_seed(0)
    from qwen_kit.testing.tiny import QWEN25_05B

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **QWEN25_05B)
    return save_model(Qwen2ForCausalLM(cfg), folder, tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", help="model to train (default: a fresh small Qwen2, see --hidden/--layers)")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="--per-device-batch")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = ap.parse_args()

    from qwen_kit.train.config import TrainConfig
    from qwen_kit.train.sft import run_sft

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    atexit.register(shutil.rmtree, work, True)  # runs save models and checkpoints: gigabytes
    os.environ.setdefault("QWEN_KIT_CACHE", str(work / "cache"))
    model = args.model or str(small_model(work / "model", args.hidden, args.layers))
    rows = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.examples]
    data = work / "rows.json"
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")

    results: dict[str, list[dict]] = {k: [] for k in args.layouts}
    for i in range(args.repeats):
        for layout in (args.layouts if i % 2 == 0 else args.layouts[::-1]):
            cfg = TrainConfig(model=model, data=str(data), output_dir=str(work / f"{layout}-{i}"), epochs=1,
                              per_device_batch=args.batch, max_len=args.max_len, learning_rate=1e-4, eval_share=0.0,
                              save_steps=100000, logging_steps=1000, warmup_ratio=0.0, loss="full", seed=0,
                              **LAYOUTS[layout])
            results[layout].append(run_sft(cfg))

    first = next(iter(results.values()))[0]
    print(f"\n{len(rows)} rows, {first['real_tokens']} real tokens; model {model if args.model else f'Qwen2 hidden {args.hidden} x {args.layers} layers (random)'}, "
          f"fp32 on {os.cpu_count()} CPU cores; run_sft, one epoch, batch {args.batch}, max_len {args.max_len}; "
          f"medians of {args.repeats} alternating runs")
    print("| layout | real tokens/s | tokens computed/s | padding efficiency | final train loss |\n| --- | --- | --- | --- | --- |")
    med = {}
    for layout in args.layouts:
        rs = results[layout]
        real = statistics.median(r["real_tokens_per_s"] for r in rs)
        med[layout] = real
        print(f"| {layout} | {real:.0f} | {statistics.median(r['computed_tokens_per_s'] for r in rs):.0f} | "
              f"{statistics.median(r['padding_efficiency'] for r in rs):.3f} | "
              f"{statistics.median(r['train_loss'] for r in rs):.4f} |")
    if "grouped" in med and "random" in med:
        print(f"length-grouped / random real tokens/s: {med['grouped'] / med['random']:.2f}")
    if "packed" in med and "grouped" in med:
        print(f"packed / length-grouped real tokens/s: {med['packed'] / med['grouped']:.2f}")


if __name__ == "__main__":
    main()
