#!/usr/bin/env python
"""The kit's trainer side by side with TRL's SFTTrainer: same rows, model, batch size, max
length, full-sequence loss, learning-rate schedule and one epoch, alternating runs.

    make bench-trl ARGS="--data ../shared/data/alpaca_en_demo.json"
    .venv-trl/bin/python bench/bench_vs_trl.py --data ../shared/data/alpaca_en_demo.json --rows 48

Runs in .venv-trl (make trl-venv): TRL over the very same torch and transformers as the kit.
Both sides train on identical token ids: the rows are rendered and tokenized once by the kit
(Qwen's chat template, full loss, --max-len) and TRL gets them pre-tokenized. Real tokens/s is
the sum of those ids over the wall time of trainer.train() for every side; the kit's own figure
is what run_sft reports (counted from its batches) and must equal that sum. Every side saves
one checkpoint at the end of training, as the kit does by default, so each timed region holds
the same write (its seconds are reported).

TRL's packing at the same batch size fills each row to --max-len, so it takes about half the
optimizer steps and trains less at the same learning rate: its final loss is not comparable.
A further TRL packing run at --packed-batch rows takes about as many steps as the padded
runs; that one is there to compare losses with.
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
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="alpaca-style JSON rows")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--packed-batch", type=int, default=2,
                    help="also run TRL packing at this batch of packed rows, which takes about as many optimizer "
                         "steps as the padded runs (0: skip); at --batch it takes about half as many")
    args = ap.parse_args()

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from qwen_kit.data.prepare import prepare_data
    from qwen_kit.data.render import RenderOptions
    from qwen_kit.model import load_model
    from qwen_kit.train.config import TrainConfig
    from qwen_kit.train.sft import run_sft

    work = Path(tempfile.mkdtemp(prefix="bench-trl-"))
    atexit.register(shutil.rmtree, work, True)  # runs save models and checkpoints: gigabytes
    os.environ.setdefault("QWEN_KIT_CACHE", str(work / "cache"))
    rows = json.loads(Path(args.data).read_text(encoding="utf-8"))[: args.rows]
    data = work / "rows.json"
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    loaded = load_model(args.model, quiet=True)
    tokenizer, path = loaded.tokenizer, loaded.ref.path
    tokens = prepare_data(str(data), tokenizer, RenderOptions("full", max_len=args.max_len), progress=False)
    real = int(sum(len(x) for x in tokens.input_ids))
    dataset = Dataset.from_dict({"input_ids": [x.tolist() for x in tokens.input_ids]})
    common = dict(per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=args.lr,
                  lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, seed=42)

    class SaveTimer(TrainerCallback):
        """Seconds spent writing checkpoints inside trainer.train() (the flow callback has set
        should_save by the time a user callback's on_step_end runs; on_save follows the write)."""

        def __init__(self):
            self.seconds, self.started = 0.0, None

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                self.started = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self.started

    def one_checkpoint(folder: Path) -> None:
        found = sorted(p.name for p in folder.glob("checkpoint-*"))
        assert len(found) == 1, (folder, found)  # like for like: each timed region wrote one

    def final_loss(model) -> float:
        """The trained model's loss over every training token (token-weighted, one row at a
        time, the same code for every side): an epoch's mean of step losses depends on which
        rows shared a step, so it cannot compare a length-grouped run with a random one."""
        model.eval()
        total = count = 0.0
        with torch.no_grad():
            for x in tokens.input_ids:
                ids = torch.as_tensor(x, dtype=torch.long)[None]
                total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
        return total / count

    def kit() -> dict:
        timer = SaveTimer()
        s = run_sft(TrainConfig(model=args.model, data=str(data), output_dir=str(work / "kit"), overwrite=True,
                                loss="full", max_len=args.max_len, eval_share=0.0, save_steps=100000,
                                logging_steps=100000, seed=42, per_device_batch=args.batch, epochs=1, learning_rate=args.lr, warmup_ratio=0.0),
                    extra_callbacks=[timer])
        one_checkpoint(work / "kit")
        assert s["real_tokens"] == real, (s["real_tokens"], real)  # the same ids as TRL's
        trained = AutoModelForCausalLM.from_pretrained(work / "kit", dtype=torch.float32)
        return {"real_tokens_per_s": s["real_tokens_per_s"], "train_loss": s["train_loss"],
                "final_loss": final_loss(trained), "save_s": timer.seconds, "steps": s["global_step"]}

    def trl_run(packing: bool, batch: int) -> dict:
        out = work / f"trl-{packing}-{batch}"
        shutil.rmtree(out, ignore_errors=True)  # the previous round's checkpoint
        torch.manual_seed(42)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        # Saving as the kit does: at the end of training (TRL's own default strategy too), so both
        # timed regions hold one checkpoint write (model, optimizer, scheduler), not the kit's alone.
        cfg = SFTConfig(output_dir=str(out), max_length=args.max_len, packing=packing,
                        save_strategy="steps", save_steps=100000, report_to="none", logging_steps=100000, use_cpu=True,
                        dataloader_num_workers=0, **{**common, "per_device_train_batch_size": batch})
        timer = SaveTimer()
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        one_checkpoint(out)
        return {"real_tokens_per_s": real / seconds, "train_loss": result.training_loss,
                "final_loss": final_loss(trainer.model), "save_s": timer.seconds,
                "steps": trainer.state.global_step}

    sides = {"kit (run_sft, length-grouped)": kit,
             f"TRL {trl.__version__} SFTTrainer, padded": lambda: trl_run(False, args.batch),
             f"TRL {trl.__version__} SFTTrainer, packing": lambda: trl_run(True, args.batch)}
    if args.packed_batch:
        sides[f"TRL {trl.__version__} SFTTrainer, packing, batch {args.packed_batch} (for the loss)"] = \
            lambda: trl_run(True, args.packed_batch)
    results: dict[str, list[dict]] = {k: [] for k in sides}
    names = list(sides)
    for i in range(args.repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            results[name].append(sides[name]())

    print(f"\n{len(rows)} rows, {real} real tokens; model {args.model} ({path.name}), batch {args.batch}, max length "
          f"{args.max_len}, full loss, one epoch, fp32 on {os.cpu_count()} CPU cores; torch {torch.__version__}; "
          f"medians of {args.repeats} alternating runs")
    print("| trainer | real tokens/s | final loss (trained model, every training token) | epoch mean of step losses "
          "| optimizer steps | checkpoint write (s, in the timed region) |\n| --- | --- | --- | --- | --- | --- |")
    med = {n: statistics.median(r["real_tokens_per_s"] for r in results[n]) for n in names}
    loss = {n: statistics.median(r["final_loss"] for r in results[n]) for n in names}
    for n in names:
        print(f"| {n} | {med[n]:.1f} | {loss[n]:.4f} | {statistics.median(r['train_loss'] for r in results[n]):.4f} "
              f"| {results[n][0]['steps']} | {statistics.median(r['save_s'] for r in results[n]):.1f} |")
    k = names[0]
    for n in names[1:]:
        print(f"kit / {n}: {med[k] / med[n]:.2f}x real tokens/s; final loss difference {abs(loss[k] - loss[n]) / loss[n]:.1%}")


if __name__ == "__main__":
    main()
