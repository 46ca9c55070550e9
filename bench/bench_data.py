#!/usr/bin/env python
"""Data preparation speed and padding efficiency on alpaca-sized data.

    python bench/bench_data.py --data ../shared/data/alpaca_en_demo.json --rows 52000 --model demo

The source rows are replicated to --rows (alpaca-cleaned has 51,760). Measured side by side:
the tokenizer's own batched call on pre-rendered text (the floor), qwen_kit's whole
preparation (validate + render + tokenize with offsets + label masks), and a cached rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=52000)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from qwen_kit.data.pack import SFTDataset, padding_efficiency
    from qwen_kit.data.prepare import prepare_data
    from qwen_kit.data.render import RenderOptions
    from qwen_kit.model.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(args.model).path)
    src = json.loads(Path(args.data).read_text(encoding="utf-8"))
    rows = (src * (args.rows // len(src) + 1))[: args.rows]
    work = Path(tempfile.mkdtemp())
    data_file = work / "alpaca.json"
    data_file.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    opts = RenderOptions(max_len=args.max_len)

    texts = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                      {"role": "assistant", "content": r["output"]}], tokenize=False) for r in rows]
    def time_raw() -> float:
        t0 = time.perf_counter()
        for lo in range(0, len(texts), 1000):
            tok(texts[lo: lo + 1000], add_special_tokens=False)
        return len(texts) / (time.perf_counter() - t0)

    def time_ours():
        t0 = time.perf_counter()
        out = prepare_data(str(data_file), tok, opts, cache_dir=None, progress=False)
        return len(rows) / (time.perf_counter() - t0), out

    raws, ours_runs = [], []
    for i in range(args.repeats):  # alternate, so machine load hits both sides alike
        if i % 2 == 0:
            raws.append(time_raw())
            rate, data = time_ours()
        else:
            rate, data = time_ours()
            raws.append(time_raw())
        ours_runs.append(rate)
    raw, ours = statistics.median(raws), statistics.median(ours_runs)
    prepare_data(str(data_file), tok, opts, cache_dir=work / "cache", progress=False)  # fill the cache
    t0 = time.perf_counter()
    prepare_data(str(data_file), tok, opts, cache_dir=work / "cache", progress=False)
    cached_s = time.perf_counter() - t0

    lengths = data.lengths()
    print(f"rows: {len(rows)} (from {args.data}), tokenizer of {args.model}, mean {lengths.mean():.0f} tokens, "
          f"max {lengths.max()}, {os.cpu_count()} cores")
    print("| step | rows/s |\n| --- | --- |")
    print(f"| tokenizer alone, batched, on pre-rendered text | {raw:.0f} |")
    print(f"(each run, rows/s: tokenizer {[round(r) for r in raws]}, qwen_kit {[round(r) for r in ours_runs]})")
    print(f"| qwen_kit prepare_data (read + validate + render + tokenize + labels) | {ours:.0f} |")
    print(f"medians of {args.repeats} alternating runs; ratio: {ours / raw:.2f} (goal >= 0.9); cached rerun: {cached_s:.2f} s (goal < 3 s)")
    print("\n| batch | padded to longest (random batches) | packed (flattened bins) |\n| --- | --- | --- |")
    ds = SFTDataset(data.input_ids, data.labels, packed=True, max_len=args.max_len)
    bin_fill = lengths.sum() / (len(ds) * args.max_len)
    for b in (4, 8, 16, 32):
        print(f"| {b} | {padding_efficiency(lengths, b, packed=False):.2f} | 1.00 |")
    print(f"bins of {args.max_len} tokens are {bin_fill:.3f} full on average ({len(ds)} bins)")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
