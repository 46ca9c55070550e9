"""Benchmark scores during training: a Trainer callback that runs the built-in evaluator every
N steps on a few datasets (OpenCompass's configs or custom files), so a fine-tuning run or an
experiment reports accuracy as it goes, without OpenCompass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback


class BenchmarkCallback(TrainerCallback):
    """Every ``every`` steps (and at the end), score ``datasets`` and record
    ``bench/<dataset>`` accuracies in the Trainer's log history and in
    ``<output_dir>/bench_scores.jsonl``. ``limit`` caps items per dataset to keep it quick."""

    def __init__(self, tokenizer: Any, datasets: Sequence[str], every: int = 200, limit: int | None = 100,
                 data_root: str | None = None, batch_size: int = 8, max_len: int = 2048):
        from qwen_kit.eval.run import collect_items

        self.tokenizer, self.every, self.batch_size, self.max_len = tokenizer, max(every, 1), batch_size, max_len
        self.items = collect_items(datasets, tokenizer, data_root, max_len, limit)  # bad input fails before training
        self.history: list[dict[str, Any]] = []

    def _score(self, args: Any, state: Any, model: Any) -> None:
        from qwen_kit.eval.run import evaluate

        rows, _ = evaluate(model, self.tokenizer, self.items, self.batch_size, self.max_len, progress=False)
        record = {"step": state.global_step, **{f"bench/{r['dataset']}": round(r["accuracy"], 2) for r in rows
                                                 if not r["dataset"].startswith("lukaemon_mmlu_")}}
        self.history.append(record)
        state.log_history.append(dict(record))
        if state.is_world_process_zero:
            out = Path(args.output_dir) / "bench_scores.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(" ".join(f"{k}={v}" for k, v in record.items()), flush=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._score(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._score(args, state, model)
