"""The batches a run trains on: grouped by their real lengths, and counted honestly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen_kit.data.pack import SFTCollator, SFTDataset
from qwen_kit.train.config import TrainConfig
from qwen_kit.train.sft import kit_trainer_class, run_sft


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))


def _trainer(model, dataset, batch, tmp_path):
    from transformers import TrainingArguments

    from qwen_kit.train.metrics import TokenMeter

    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=batch, use_cpu=True,
                             train_sampling_strategy="group_by_length", remove_unused_columns=False, report_to="none",
                             seed=0)
    return kit_trainer_class()(model=model, args=args, train_dataset=dataset, data_collator=SFTCollator(False, 0),
                               meter=TokenMeter(params=1, layers=1, hidden=1))


def test_batches_hold_rows_of_similar_real_length(tiny, tmp_path):
    """The issue's rows: 5, 500, 7, 400, 9, 300, 11 and 200 tokens. transformers' sampler saw
    every item as length 1 and paired 400 with 9; grouped by real length, each batch of two
    holds neighbours in length."""
    lengths = [5, 500, 7, 400, 9, 300, 11, 200]
    ids = [np.arange(n) % 50 + 10 for n in lengths]
    dataset = SFTDataset(ids, [x.copy() for x in ids], packed=False, max_len=512)
    batches = [sorted(b["attention_mask"].sum(1).tolist()) for b in _trainer(tiny.model, dataset, 2, tmp_path)
               .get_train_dataloader()]
    assert sorted(batches) == [[5, 7], [9, 11], [200, 300], [400, 500]]


def _rows(n=96, seed=0):
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [{"instruction": f"Repeat item {i}.", "input": "",
             "output": " ".join(rng.choice(words, size=int(rng.integers(2, 60))))} for i in range(n)]


def test_the_reported_padding_efficiency_is_the_collated_batches(tiny_qwen_dir, tmp_path, monkeypatch):
    seen = []
    original = SFTCollator.__call__

    def recording(self, items):
        batch = original(self, items)
        seen.append((int(batch["attention_mask"].sum()), int(batch["input_ids"].numel())))
        return batch

    monkeypatch.setattr(SFTCollator, "__call__", recording)
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows()), encoding="utf-8")
    summary = run_sft(TrainConfig(model=str(tiny_qwen_dir), data=str(data), output_dir=str(tmp_path / "run"),
                                  max_len=256, per_device_batch=8, epochs=1, eval_share=0.0, save_steps=1000,
                                  logging_steps=2, learning_rate=1e-4, warmup_ratio=0.0))
    real, computed = sum(r for r, _ in seen), sum(c for _, c in seen)
    assert (summary["real_tokens"], summary["computed_tokens"]) == (real, computed)
    assert summary["padding_efficiency"] == pytest.approx(real / computed)
    assert summary["padding_efficiency"] >= 0.9  # length-grouped at batch 8
    assert summary["real_tokens_per_s"] == pytest.approx(real / summary["train_seconds"])
    logged = [h for h in summary["log_history"] if "tokens/real" in h]
    assert logged and logged[-1]["tokens/real"] == real and logged[-1]["tokens/padding_efficiency"] > 0.9
    assert "num_input_tokens_seen" not in json.dumps(summary["log_history"])  # it counted padding
    assert summary["mfu"] is None  # no GPU, no peak rate to divide by


def test_each_epoch_covers_every_row_once_in_a_new_replayable_order():
    from qwen_kit.data.pack import LengthGroupedSampler

    lengths = list(np.random.default_rng(1).integers(5, 900, size=1003))
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=42)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(1003)) and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed run replays epoch 0 exactly
    batches = [first[i: i + 8] for i in range(0, len(first), 8)]
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first: OOM shows at step 1
    assert len(batches[-1]) == 1003 % 8  # the incomplete batch last, so every other cut is on a boundary
    real = sum(sum(lengths[i] for i in b) for b in batches)
    computed = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert real / computed > 0.95


@pytest.mark.parametrize("device, capability, flash, want", [
    ("cpu", None, False, "sdpa"), ("cpu", None, True, "sdpa"),
    ("cuda:0", (7, 5), False, "sdpa"), ("cuda:0", (7, 5), True, "sdpa"),          # T4
    ("cuda:0", (8, 0), False, "sdpa"), ("cuda:0", (8, 0), True, "flash_attention_2"),  # A100
    ("cuda:0", (8, 9), False, "sdpa"), ("cuda:0", (8, 9), True, "flash_attention_2"),  # L20
])
def test_auto_attention_follows_the_gpu_and_flash_attn(device, capability, flash, want):
    from qwen_kit.model.precision import choose_attention

    chosen, why = choose_attention("auto", device, capability, flash)
    assert chosen == want and why.startswith("auto:")
    if capability and capability >= (8, 0) and not flash:
        assert "not installed" in why
    if capability == (7, 5):
        assert "7.5" in why


@pytest.mark.parametrize("device, capability, flash, message", [
    ("cuda:0", (7, 5), True, "Ampere or newer"), ("cpu", None, True, "the CPU"), ("cuda:0", (8, 0), False, "pip install")])
def test_flash_attention_where_it_cannot_run_is_refused(device, capability, flash, message):
    from qwen_kit.errors import UserError
    from qwen_kit.model.precision import choose_attention

    with pytest.raises(UserError, match=message):
        choose_attention("flash_attention_2", device, capability, flash)


def test_the_run_says_which_attention_and_packing_it_chose_and_liger_is_refused_on_cpu(tiny_qwen_dir, tmp_path):
    from tests.conftest import run_script

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows(16)), encoding="utf-8")
    common = ["--model", str(tiny_qwen_dir), "--data", str(data), "--max-steps", "1", "--max-len", "128",
              "--eval-share", "0", "--per-device-batch", "4"]
    env = {"QWEN_KIT_CACHE": str(tmp_path / "cache")}
    res = run_script("sft.py", *common, "--output-dir", str(tmp_path / "a"), env=env)
    err = res.stderr.decode()
    assert res.returncode == 0, err[-1500:]
    assert "attention: sdpa (auto: no GPU); packing: off (default with sdpa attention" in err
    assert "padding efficiency" in err and "real tokens/s" in err
    summary = json.loads((tmp_path / "a" / "run_summary.json").read_text())
    assert summary["attention"] == "sdpa" and summary["packing"] is False
    eager = run_script("sft.py", *common, "--output-dir", str(tmp_path / "b"), "--attn", "eager", env=env)
    assert "attention: eager (asked for)" in eager.stderr.decode()
    liger = run_script("sft.py", *common, "--output-dir", str(tmp_path / "c"), "--liger", env=env)
    lines = liger.stderr.decode().strip().splitlines()
    assert liger.returncode == 2 and "--liger needs a CUDA GPU" in lines[-1] and "Traceback" not in liger.stderr.decode()
