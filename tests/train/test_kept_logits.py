"""The LM head runs only where a token is trained on: the same loss and gradients as
transformers' own, on real rendered batches (reply-only labels, padded and packed, full and
LoRA), and through run_sft."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_kit.data.pack import SFTCollator, SFTDataset
from qwen_kit.data.prepare import prepare_data
from qwen_kit.data.render import IGNORE, RenderOptions
from qwen_kit.train.config import TrainConfig
from qwen_kit.train.sft import loss_on_trained_positions, run_sft
from tests.conftest import train_losses

ROWS = [{"instruction": "Name a colour." + " Please." * (i % 5), "input": "", "output": "Blue" + ", really" * i + "."}
        for i in range(8)]
ROWS += [{"instruction": "把这句话翻译成英文。", "input": "我喜欢绿茶。", "output": "I like green tea."}]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    return path


def _batch(tiny, data_file, packed):
    data = prepare_data(str(data_file), tiny.tokenizer, RenderOptions("response", max_len=256), progress=False)
    ds = SFTDataset(data.input_ids, data.labels, packed, 256)
    batch = SFTCollator(packed, tiny.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    trained = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert 0 < trained < batch["labels"].numel() // 2  # reply-only: most positions train on nothing
    return batch


def _loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_loss_and_gradients_equal_transformers_own(tiny_qwen_dir, tiny, data_file, packed, lora):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        for n, p in model.named_parameters():  # LoRA B starts at zero: give the adapters something to pass on
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    batch = _batch(tiny, data_file, packed)
    items = int((batch["labels"][:, 1:] != IGNORE).sum())
    for count in (None, torch.tensor(items * 3)):  # a mean, and a sum over a larger accumulated batch
        stock, stock_grads = _loss_and_grads(model, lambda: model(**batch, num_items_in_batch=count).loss)
        kept, kept_grads = _loss_and_grads(model, lambda: loss_on_trained_positions(model, model.get_output_embeddings(), batch, count))
        assert kept == pytest.approx(stock, rel=1e-5)
        assert stock_grads.keys() == kept_grads.keys()
        for name, g in stock_grads.items():
            torch.testing.assert_close(kept_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_run_sft_projects_only_trained_positions_and_trains_the_same(tiny_qwen_dir, data_file, tmp_path):
    """Through the user's path: a hook on the LM head counts the positions it projects. The
    default run projects far fewer than a --all-logits run, and both log the same losses."""
    from transformers import TrainerCallback

    class CountHead(TrainerCallback):
        def __init__(self):
            self.positions = 0

        def on_train_begin(self, args, state, control, model=None, **kw):
            head = model.get_output_embeddings()
            head.register_forward_hook(lambda m, i, o: setattr(self, "positions", self.positions + o.shape[:-1].numel()))

    runs = {}
    for all_logits in (False, True):
        counter = CountHead()
        cfg = TrainConfig(model=str(tiny_qwen_dir), data=str(data_file), output_dir=str(tmp_path / f"run-{all_logits}"),
                          max_len=256, per_device_batch=3, learning_rate=1e-3, max_steps=3, eval_share=0.0,
                          save_steps=1000, logging_steps=1, warmup_ratio=0.0, all_logits=all_logits)
        runs[all_logits] = (run_sft(cfg, extra_callbacks=[counter]), counter.positions)
    (kept, kept_positions), (stock, stock_positions) = runs[False], runs[True]
    assert kept["kept_logits"] is True and stock["kept_logits"] is False
    assert stock_positions == stock["computed_tokens"]  # every position of every batch
    assert kept_positions == kept["trained_tokens"] < stock_positions * 0.8  # each trained position once
    assert train_losses(kept) == pytest.approx(train_losses(stock), rel=1e-4) and len(train_losses(kept)) == 3
