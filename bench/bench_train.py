#!/usr/bin/env python
"""Training throughput on CPU: packed vs length-grouped padded batches, same model and data.

    python bench/bench_train.py --data ../shared/data/alpaca_en_demo.json --examples 256

Both sides train the same freshly initialised Qwen2 (small, from Qwen2Config, with the demo
model's tokenizer) on the same examples with the same optimizer, and go through every
example once. Reported: real (non-padding) tokens per second, tokens computed per
second, and the padding efficiency each layout achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="examples per unpacked micro-batch")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from qwen_kit.data.pack import SFTCollator, SFTDataset
    from qwen_kit.data.prepare import prepare_data
    from qwen_kit.data.render import RenderOptions
    from qwen_kit.model.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("demo").path)
    rows = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.examples]
    path = Path(tempfile.mkdtemp()) / "rows.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    data = prepare_data(str(path), tok, RenderOptions(max_len=args.max_len), progress=False)
    real_tokens = int(data.lengths().sum())
    # Packed bins hold about as many tokens as an unpacked batch does on average.
    bin_len = max(args.max_len, int(data.lengths().mean() * args.batch))

    def run(layout: str) -> tuple[float, float, float]:
        packed = layout == "packed"
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                          num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
                          max_position_embeddings=4096, use_cache=False)
        model = Qwen2ForCausalLM(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ds = SFTDataset(data.input_ids, data.labels, packed, bin_len)
        collate = SFTCollator(packed, tok.pad_token_id or 0)
        if packed:
            batches = [collate([ds[i]]) for i in range(len(ds))]
        else:  # grouped: sorted by length (what group_by_length approximates); random: shuffled
            order = np.argsort(ds.lengths()) if layout == "grouped" else np.random.default_rng(0).permutation(len(ds))
            batches = [collate([ds[int(i)] for i in order[lo: lo + args.batch]]) for lo in range(0, len(order), args.batch)]
        computed = sum(b["input_ids"].numel() for b in batches)
        t0 = time.perf_counter()
        for b in batches:
            loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        return real_tokens / dt, computed / dt, real_tokens / computed

    layouts = ["packed", "grouped", "random"]
    results = {k: [] for k in layouts}
    for i in range(args.repeats):
        for layout in (layouts if i % 2 == 0 else layouts[::-1]):
            results[layout].append(run(layout))
    print(f"{len(data)} examples, {real_tokens} real tokens, Qwen2 hidden {args.hidden} x {args.layers} layers, "
          f"vocab {len(tok)}, fp32 on {os.cpu_count()} CPU cores, {args.repeats} alternating runs (medians)")
    print("| layout | real tokens/s | tokens computed/s | padding efficiency |\n| --- | --- | --- | --- |")
    med = {}
    names = {"random": f"random padded batches of {args.batch}", "grouped": f"length-grouped padded batches of {args.batch}",
             "packed": f"packed bins of {bin_len} tokens"}
    for layout in ("random", "grouped", "packed"):
        r = [statistics.median(x[k] for x in results[layout]) for k in range(3)]
        med[layout] = r[0]
        print(f"| {names[layout]} | {r[0]:.0f} | {r[1]:.0f} | {r[2]:.2f} |")
    print(f"packed / random real tokens/s: {med['packed'] / med['random']:.2f}; "
          f"packed / length-grouped: {med['packed'] / med['grouped']:.2f}")


if __name__ == "__main__":
    main()
