"""LoRA outputs: reload, merge, QLoRA on CPU, and the errors users hit."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_kit.train.config import TrainConfig
from qwen_kit.train.sft import run_sft
from tests.conftest import run_script, train_losses

ROWS = [{"instruction": f"Name the colour number {i}.", "input": "", "output": f"Colour {i} is green."} for i in range(24)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))


def _train(tiny_qwen_dir, tmp_path, out, **kw):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(ROWS))
    captured = {}

    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **_):
            captured["model"] = model

    options = dict(model=str(tiny_qwen_dir), data=str(data), output_dir=str(out), finetune="lora", lora_r=4,
                   learning_rate=1e-2, max_steps=4, per_device_batch=4, max_len=128, eval_share=0.0,
                   save_steps=1000, warmup_ratio=0.0)
    cfg = TrainConfig(**{**options, **kw})
    return run_sft(cfg, extra_callbacks=[Keep()]), captured["model"]


def _logits(model, tok, text="Name the colour number 3."):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_saved_adapter_reloads_to_the_same_logits_and_merges_exactly(tiny, tiny_qwen_dir, tmp_path):
    from qwen_kit.model import LoadOptions, load_model

    _, trained = _train(tiny_qwen_dir, tmp_path, tmp_path / "lora")
    trained.eval()
    expected = _logits(trained, tiny.tokenizer)
    reloaded = load_model(str(tiny_qwen_dir), LoadOptions(adapter=str(tmp_path / "lora")), quiet=True)
    assert torch.allclose(_logits(reloaded.model, tiny.tokenizer), expected, atol=1e-6)
    assert not torch.allclose(_logits(tiny.model, tiny.tokenizer), expected, atol=1e-4)  # the adapter matters

    res = run_script("merge_lora.py", str(tmp_path / "lora"), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    merged = load_model(str(tmp_path / "merged"), quiet=True)
    assert not any("lora" in n for n, _ in merged.model.named_parameters())
    assert torch.allclose(_logits(merged.model, tiny.tokenizer), expected, atol=1e-4)
    # the chat takes the adapter folder itself as --model, resolving its base
    assert load_model(str(tmp_path / "lora"), quiet=True).adapter == (tmp_path / "lora").resolve()


def test_qlora_trains_on_cpu_with_4bit_base_weights(tiny_qwen_dir, tmp_path):
    import math

    from safetensors.torch import load_file

    summary, model = _train(tiny_qwen_dir, tmp_path, tmp_path / "qlora", finetune="qlora", max_steps=12,
                            logging_steps=1)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    losses = train_losses(summary)
    assert summary["global_step"] == 12 and all(math.isfinite(x) for x in losses + [summary["train_loss"]])
    # it learned: a reply it was trained on costs less than it did for the untouched base
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    ids = tok("Colour 5 is green.", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
    with torch.no_grad():
        before = float(base(**ids, labels=ids["input_ids"]).loss)
        after = float(model(**ids, labels=ids["input_ids"]).loss)
    assert after < before - 0.5, (before, after)
    adapter = load_file(tmp_path / "qlora" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # B left zero-init
    assert summary["trainable_params"] < summary["total_params"]


def test_a_rank_of_zero_is_refused(tiny_qwen_dir, tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    res = run_script("sft.py", "--model", str(tiny_qwen_dir), "--data", str(tmp_path / "d.json"), "--output-dir",
                     str(tmp_path / "o"), "--finetune", "lora", "--lora-r", "0")
    assert res.returncode == 2 and b"--lora-r must be a positive rank" in res.stderr


def test_merging_into_an_existing_model_folder_is_refused(tiny_qwen_dir, tmp_path):
    (tmp_path / "a").mkdir()
    res = run_script("merge_lora.py", str(tmp_path / "a"), "--out", str(tiny_qwen_dir))
    assert res.returncode == 2 and b"already holds a model" in res.stderr


def test_an_adapter_names_its_base_as_the_run_was_told(tmp_path):
    """A LoRA run on `qwen-coder-0.5b` or a hub id records that name, not the cache folder it
    resolved to here: copied to another machine (Kaggle → laptop), the adapter still finds its
    base. A run given a folder keeps the folder PEFT wrote."""
    import json

    from qwen_kit.train.sft import name_base_model

    for given, expected in [("qwen-coder-0.5b", "qwen-coder-0.5b"), ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
                            (str(tmp_path), str(tmp_path / "cache/base"))]:
        out = tmp_path / f"run-{abs(hash(given))}"
        out.mkdir()
        (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "cache/base"),
                                                             "r": 8}), encoding="utf-8")
        name_base_model(out, given)
        saved = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
        assert saved == {"base_model_name_or_path": expected, "r": 8}
    name_base_model(tmp_path / "full-run", "qwen-coder-0.5b")  # a full fine-tune has no adapter: nothing written
    assert not (tmp_path / "full-run").exists()
