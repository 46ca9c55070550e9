"""scripts/sft.py on the real Qwen2.5-Coder-0.5B-Instruct: two full steps and two LoRA steps, each
saving a folder that transformers 4 and 5 read as one model (RoPE base 1e6, untied head kept); the
merged LoRA fine-tune exported to GGUF runs in llama.cpp as in transformers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from qwen_kit.model.portable import portability_problems
from tests.conftest import QWEN, run_script, train_losses
from tests.export.test_gguf import PROMPTS, assert_llama_cpp_runs_like_the_folder, chat_prompts, needs_llama
from tests.model.test_portable import _assert_same_model, needs_tf4

pytestmark = pytest.mark.qwen

ROWS = [{"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
        {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
        {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
        {"instruction": "一年有几个月？", "input": "", "output": "十二个月。"}]


def _sft(tmp_path: Path, out: Path, *flags: str) -> dict:
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    res = run_script("sft.py", "--model", QWEN, "--data", str(data), "--output-dir", str(out), "--max-len", "64",
                     "--per-device-batch", "1", "--max-steps", "2", "--eval-share", "0", "--save-steps", "0",
                     "--logging-steps", "1", "--warmup-ratio", "0", *flags,
                     timeout=1200)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    summary = json.loads((out / "run_summary.json").read_text(encoding="utf-8"))
    losses = train_losses(summary)
    assert summary["global_step"] == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert not list(out.glob("checkpoint-*"))  # --save-steps 0: no 7 GB checkpoint (weights + Adam state)
    return summary


def _tensors(folder: Path, *names: str):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return [f.get_tensor(n) for n in names]


@needs_tf4
def test_two_full_steps_save_a_folder_both_transformers_read_alike(qwen_dir, tmp_path):
    import torch

    out = tmp_path / "full"
    _sft(tmp_path, out, "--finetune", "full", "--learning-rate", "1e-5")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1e6
    assert config["tie_word_embeddings"] is False
    head, embed = _tensors(out, "lm_head.weight", "model.embed_tokens.weight")
    base_head, = _tensors(qwen_dir, "lm_head.weight")
    assert not torch.equal(head, embed)  # the untied head is saved as its own tensor
    assert not torch.equal(head, base_head)  # and it was trained
    _assert_same_model(out, rope_base=1e6)  # logits within 1e-4 under transformers 4.57 and 5


@pytest.fixture(scope="module")
def lora_run(qwen_dir, tmp_path_factory):
    """Two LoRA steps on Qwen2.5-Coder-0.5B merged by scripts/merge_lora.py: the fine-tune a student
    exports. Shared by the tests below and freed after them (the merged fp32 folder is 2.5 GB)."""
    root = tmp_path_factory.mktemp("qwen-lora")
    summary = _sft(root, root / "lora", "--finetune", "lora", "--lora-r", "8", "--learning-rate", "1e-3")
    res = run_script("merge_lora.py", str(root / "lora"), "--out", str(root / "merged"), timeout=900)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    yield root, summary
    shutil.rmtree(root, ignore_errors=True)


def test_two_lora_steps_save_an_adapter_that_merges_into_a_portable_folder(qwen_dir, lora_run):
    root, summary = lora_run
    assert summary["trainable_params"] < summary["total_params"] / 50
    adapter = json.loads((root / "lora" / "adapter_config.json").read_text())
    # the name the run was given, not this machine's cache folder: the adapter works where it is copied
    assert adapter["base_model_name_or_path"] == QWEN
    config = json.loads((root / "merged" / "config.json").read_text())
    assert config["rope_theta"] == 1e6 and config["tie_word_embeddings"] is False
    assert portability_problems(root / "merged") == []


@needs_llama
def test_the_merged_fine_tune_exported_to_f16_runs_in_llama_cpp_like_its_folder(lora_run, tmp_path):
    """scripts/export_gguf.py on the merged folder (1.2 GB of f16): llama.cpp tokenizes the fixed
    bilingual ChatML text as Qwen's tokenizer does and continues English, Chinese and code prompts
    greedily as transformers does on the folder."""
    from transformers import AutoTokenizer

    merged, path = lora_run[0] / "merged", tmp_path / "merged-f16.gguf"
    done = run_script("export_gguf.py", str(merged), "--out", str(path), "--quant", "f16")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert_llama_cpp_runs_like_the_folder(path, merged, tokenizer, chat_prompts(tokenizer) + PROMPTS[:1])


def test_two_qlora_steps_train_an_adapter_the_chat_loads_by_its_base_name(qwen_dir, tmp_path):
    """QLoRA (an nf4 base through bitsandbytes, which runs on the CPU too) trains two finite steps,
    the adapter names its base `qwen-coder-0.5b`, and chat.py given only the adapter folder finds
    that base and answers."""
    out = tmp_path / "qlora"
    summary = _sft(tmp_path, out, "--finetune", "qlora", "--lora-r", "8", "--learning-rate", "1e-3")
    assert summary["trainable_params"] < summary["total_params"] / 50
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == QWEN
    res = run_script("chat.py", "--model", str(out), "--greedy", "--jsonl", "--max-new-tokens", "16",
                     input="What is the capital of France?\n", timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert "Paris" in json.loads(res.stdout.decode().splitlines()[0])["assistant"]
