"""Loading: adapters, 4-bit weights, remote code, and their errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qwen_kit.errors import UserError
from qwen_kit.model import LoadOptions, load_model
from qwen_kit.model.precision import choose_precision


def _logits(loaded, text="The capital of France is"):
    ids = loaded.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**ids).logits


def _save_random_lora(base_dir, out_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False: B is random too, so the adapter visibly changes outputs.
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out_dir)
    return out_dir


def test_loading_an_adapter_changes_the_output(tiny, tiny_qwen_dir, tmp_path):
    adapter = _save_random_lora(tiny_qwen_dir, tmp_path / "lora")
    with_adapter = load_model(str(tiny_qwen_dir), LoadOptions(adapter=str(adapter)), quiet=True)
    assert with_adapter.adapter == adapter.resolve()
    assert not torch.allclose(_logits(tiny), _logits(with_adapter), atol=1e-4)


def test_an_adapter_for_another_base_model_is_refused(tiny_qwen_dir, tmp_path):
    from qwen_kit.testing import build_tiny_qwen

    other = build_tiny_qwen(tmp_path / "wider", hidden_size=256)
    adapter = _save_random_lora(other, tmp_path / "lora-for-wider")
    with pytest.raises(UserError, match="does not fit base model"):
        load_model(str(tiny_qwen_dir), LoadOptions(adapter=str(adapter)), quiet=True)


def test_a_4bit_load_generates(tiny_qwen_dir, record_property):
    """Both of bitsandbytes' CPU paths: on a CPU with AVX512-BF16 it repacks the 4-bit weights
    for its fused kernel at the first forward (this needs dimensions in multiples of its 64-wide
    blocks, as real models have); elsewhere it dequantises. The path taken is recorded."""
    from bitsandbytes.functional import has_avx512bf16

    loaded = load_model(str(tiny_qwen_dir), LoadOptions(load_in_4bit=True), quiet=True)
    layers = [m for m in loaded.model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers
    ids = loaded.tokenizer("hello", return_tensors="pt")
    pad = loaded.tokenizer.pad_token_id
    out = loaded.model.generate(**ids, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=pad)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    repacked = [bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in layers]
    path = "AVX512-BF16 repacked kernel" if has_avx512bf16() else "dequantise, then matmul"
    record_property("bitsandbytes_cpu_path", path)
    print(f"bitsandbytes CPU path: {path}")
    assert all(repacked) if has_avx512bf16() else not any(repacked), (path, repacked)


def test_remote_code_is_not_run_without_the_flag(tiny_qwen_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_qwen_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_model(str(folder), quiet=True)


@pytest.mark.parametrize("device,capability,want", [
    ("cuda:0", (7, 5), "float16"),   # T4: no bf16
    ("cuda:0", (8, 0), "bfloat16"),  # A100
    ("cpu", None, "float32"),
])
def test_precision_follows_the_hardware(device, capability, want):
    p = choose_precision(device, capability)
    assert p.dtype == want and p.attn_implementation == "sdpa" and not p.load_in_4bit
    assert choose_precision(device, capability, load_in_4bit=True).load_in_4bit


@pytest.mark.gpu
def test_4bit_on_cuda_generates(tiny_qwen_dir):
    loaded = load_model(str(tiny_qwen_dir), LoadOptions(load_in_4bit=True, device="cuda"), quiet=True)
    ids = loaded.tokenizer("hello", return_tensors="pt").to("cuda")
    assert loaded.model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > 1


@pytest.mark.parametrize("device,capability,prefer,want_4bit", [
    ("cuda:0", (7, 5), True, True),    # a 1.5B model on a Kaggle T4: nf4 by default
    ("cuda:0", (8, 0), False, False),  # A100 elsewhere: full bf16
    ("cpu", None, True, False),        # no GPU: 4-bit only when asked
])
def test_the_platform_default_decides_4bit_only_on_a_gpu(device, capability, prefer, want_4bit):
    p = choose_precision(device, capability, load_in_4bit=None, prefer_4bit=prefer)
    assert p.load_in_4bit is want_4bit
    assert choose_precision(device, capability, load_in_4bit=False, prefer_4bit=True).load_in_4bit is False


def test_parameter_estimate_matches_qwen25_sizes():
    from qwen_kit.model.precision import estimate_params

    q05 = {"hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864, "vocab_size": 151936,
           "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}
    q15 = {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "vocab_size": 151936,
           "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True}
    assert 0.45e9 < estimate_params(q05) < 0.52e9 and 1.45e9 < estimate_params(q15) < 1.6e9


def _poisoned_copy(tiny_qwen_dir, tmp_path):
    """The tiny model with NaN in one layer: what Qwen2's fp16 overflow looks like downstream."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan-model"
    shutil.copytree(tiny_qwen_dir, folder)
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if "mlp.down_proj" in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, folder / "model.safetensors")
    return folder


def test_the_startup_check_catches_nan_logits(tiny, tiny_qwen_dir, tmp_path):
    from qwen_kit.model.load import generation_problem

    assert generation_problem(tiny.model, tiny.tokenizer) is None
    bad = load_model(str(_poisoned_copy(tiny_qwen_dir, tmp_path)), quiet=True)
    assert generation_problem(bad.model, bad.tokenizer) == "NaN or infinite logits"


def test_fp16_falls_back_to_eager_then_fp32_with_a_message(tiny_qwen_dir, tmp_path, capsys):
    healthy = load_model(str(tiny_qwen_dir), LoadOptions(dtype="float16"), quiet=True)
    assert healthy.precision.dtype == "float16"  # checked, healthy, kept
    with pytest.raises(UserError, match=r"does not generate properly.*float16/sdpa.*float16/eager.*float32/sdpa"):
        load_model(str(_poisoned_copy(tiny_qwen_dir, tmp_path)), LoadOptions(dtype="float16"), quiet=True)
    err = capsys.readouterr().err
    assert "retrying with float16 and eager attention" in err and "retrying with float32 and sdpa attention" in err
