"""Saved folders read the same under transformers 4 and 5: every kit save path, the repair of
folders saved before, the reader check, and the refusals that protect an evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qwen_kit.model.readers import ROOT, Reader, check_folder, max_abs_diff
from tests.conftest import make_dry_run, run_script

TF4 = ROOT / ".venv-tf4" / "bin" / "python"
needs_tf4 = pytest.mark.skipif(not TF4.is_file(), reason="needs .venv-tf4 (transformers 4): `make tf4-venv`, "
                                                          "which `make test` runs first")
ROWS = [{"instruction": f"Say the number {i} in words.", "input": "", "output": f"The number is {i}."} for i in range(16)]


def _readers():
    import sys

    return [Reader("kit", sys.executable), Reader("transformers4", str(TF4))]


def _assert_same_model(folder: Path, rope_base: float = 1e6):
    """Loaded under transformers 4.57 and 5: the same RoPE base, the same logits within 1e-4,
    and no field read differently."""
    result = check_folder(folder, _readers(), logits=True)
    kit, tf4 = result["reports"]
    assert tf4["reader"].startswith("transformers 4.") and kit["reader"].startswith("transformers 5.")
    assert kit["effective"]["rope_base"] == tf4["effective"]["rope_base"] == rope_base
    assert max_abs_diff(kit["logits"], tf4["logits"]) <= 1e-4
    assert result["disagreements"]["transformers4"] == []
    return kit, tf4


def _train(tiny_qwen_dir, tmp_path, **kw):
    from qwen_kit.train.config import TrainConfig
    from qwen_kit.train.sft import run_sft

    data = tmp_path / "train.json"
    data.write_text(json.dumps(ROWS), encoding="utf-8")
    cfg = dict(model=str(tiny_qwen_dir), data=str(data), max_len=128, per_device_batch=4, learning_rate=1e-3,
               max_steps=2, eval_share=0.0, save_steps=1, logging_steps=1, warmup_ratio=0.0)
    return run_sft(TrainConfig(**{**cfg, **kw}))


def test_the_fixture_has_qwen25_values_not_library_defaults(tiny_qwen_dir):
    config = json.loads((tiny_qwen_dir / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == 1e6  # library default: 10,000
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert config["num_key_value_heads"] < config["num_attention_heads"] and config["tie_word_embeddings"]
    assert config["rms_norm_eps"] == 1e-6 and config["max_window_layers"] == 21
    assert all(config[k] % 64 == 0 for k in ("hidden_size", "intermediate_size", "vocab_size"))
    tokenizer = json.loads((tiny_qwen_dir / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert min(specials.values()) > 0 and config["vocab_size"] > max(specials.values())  # padded like Qwen's
    assert config["eos_token_id"] == specials["<|im_end|>"] and config["pad_token_id"] == specials["<|endoftext|>"]
    generation = json.loads((tiny_qwen_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [specials["<|im_end|>"], specials["<|endoftext|>"]]


@needs_tf4
def test_a_full_finetune_and_its_checkpoint_read_the_same_under_transformers_4_and_5(tiny_qwen_dir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))
    _assert_same_model(tiny_qwen_dir)  # the fixture itself goes through save_model too
    _train(tiny_qwen_dir, tmp_path, output_dir=str(tmp_path / "full"), save_steps=1)
    _assert_same_model(tmp_path / "full")
    _assert_same_model(tmp_path / "full" / "checkpoint-1")


@needs_tf4
def test_a_merged_lora_reads_the_same_under_transformers_4_and_5(tiny_qwen_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))
    _train(tiny_qwen_dir, tmp_path, output_dir=str(tmp_path / "lora"), finetune="lora", lora_r=4,
           learning_rate=1e-2, save_steps=1000)
    res = run_script("merge_lora.py", str(tmp_path / "lora"), "--base", str(tiny_qwen_dir),
                     "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    _assert_same_model(tmp_path / "merged")
    generation = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert generation["temperature"] == 0.7 and len(generation["eos_token_id"]) == 2


def _saved_the_old_way(tiny_qwen_dir, folder: Path) -> Path:
    """What the kit wrote before this fix: transformers 5's save_pretrained as it is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tiny_qwen_dir).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_qwen_dir).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "rope_theta" not in config and config["rope_parameters"]["rope_theta"] == 1e6
    return folder


@needs_tf4
def test_an_old_folder_is_misread_then_repaired_by_make_portable(tiny_qwen_dir, tmp_path):
    old = _saved_the_old_way(tiny_qwen_dir, tmp_path / "old")
    weights = (old / "model.safetensors").read_bytes()
    before = check_folder(old, _readers())
    assert before["reports"][1]["effective"]["rope_base"] == 10000.0  # the silent misreading
    check = run_script("check_model.py", str(old))
    out = check.stdout.decode()
    assert check.returncode == 1 and "effective.rope_base: kit reads 1000000.0, transformers4 reads 10000.0" in out
    assert f"make portable MODEL={old}" in out

    res = run_script("portable.py", str(old))
    err = res.stderr.decode()
    assert res.returncode == 0 and "rope_theta: None -> 1000000.0" in err and "extra_special_tokens" in err, err
    assert (old / "model.safetensors").read_bytes() == weights  # only JSON changes
    _assert_same_model(old)
    again = run_script("portable.py", str(old))
    assert "already portable, nothing to change" in again.stderr.decode()
    assert run_script("check_model.py", str(old)).returncode == 0


def test_loading_a_folder_another_reader_would_misread_warns(tiny_qwen_dir, tmp_path, capsys):
    from qwen_kit.model import load_model

    old = _saved_the_old_way(tiny_qwen_dir, tmp_path / "old")
    load_model(str(old))
    err = capsys.readouterr().err
    assert "would read" in err and "rope_theta" in err and f"make portable MODEL={old}" in err
    load_model(str(tiny_qwen_dir))
    assert "would read" not in capsys.readouterr().err


def test_the_eval_wrapper_make_eval_runs_refuses_a_folder_opencompass_would_misread(tiny_qwen_dir, tmp_path):
    old = _saved_the_old_way(tiny_qwen_dir, tmp_path / "old")
    res = run_script("opencompass_eval.py", str(old), "--datasets", str(ROOT / "tests/eval/reference/mcq_small.jsonl"),
                     "--out", str(tmp_path / "oc"))
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1, err
    assert "rope_theta" in err and f"make portable MODEL={old}" in err and "Traceback" not in err


def test_make_portable_and_check_model_pass_their_folders():
    assert "scripts/portable.py out/a out/b" in make_dry_run("portable", "MODEL=out/a out/b")
    assert "scripts/check_model.py out/a --logits" in make_dry_run("check-model", "MODEL=out/a", "ARGS=--logits")


def test_a_malformed_config_is_one_line_and_keeps_the_file(tmp_path, tiny_qwen_dir):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_qwen_dir, folder)
    (folder / "config.json").write_text('{"rope_parameters": ', encoding="utf-8")
    res = run_script("portable.py", str(folder))
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and "config" in err and "malformed" in err and len(err.splitlines()) == 1
    assert (folder / "config.json").read_text() == '{"rope_parameters": '


@pytest.mark.slow
@needs_tf4
def test_the_demo_conversion_reads_the_same_under_transformers_4_and_5():
    from qwen_kit.model import resolve_model

    _assert_same_model(resolve_model("demo").path, rope_base=100000.0)


def _with_generation_config(tiny_qwen_dir, folder: Path, generation: dict) -> Path:
    """The fixture with another generation_config.json, e.g. the greedy one a Qwen2.5 base model ships."""
    shutil.copytree(tiny_qwen_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    return folder


def _eot(tiny_qwen_dir) -> int:
    specials = json.loads((tiny_qwen_dir / "tokenizer.json").read_text())["added_tokens"]
    return next(t["id"] for t in specials if t["content"] == "<|endoftext|>")


# Qwen2.5-0.5B's (base) generation_config.json, with the fixture's <|endoftext|> id
BASE_GREEDY = {"bos_token_id": None, "do_sample": False, "eos_token_id": None, "max_new_tokens": 2048,
               "transformers_version": "4.37.0"}


@pytest.mark.parametrize("kind", ["base-model greedy", "nothing about decoding"])
def test_make_portable_never_changes_how_a_model_decodes(tiny_qwen_dir, tmp_path, kind):
    eot = _eot(tiny_qwen_dir)
    generation = ({**BASE_GREEDY, "bos_token_id": eot, "eos_token_id": eot} if kind == "base-model greedy"
                  else {"bos_token_id": eot, "eos_token_id": eot})
    folder = _with_generation_config(tiny_qwen_dir, tmp_path / "m", generation)
    res = run_script("portable.py", str(folder))
    assert res.returncode == 0, res.stderr.decode()
    after = json.loads((folder / "generation_config.json").read_text())
    # Only the ChatML end id is added; every decoding field is as the model's author wrote it.
    assert after["eos_token_id"][-1] == eot and len(after["eos_token_id"]) == 2
    assert {k: v for k, v in after.items() if k != "eos_token_id"} == {k: v for k, v in generation.items()
                                                                       if k != "eos_token_id"}
    again = run_script("portable.py", str(folder))
    assert "already portable, nothing to change" in again.stderr.decode()
    assert json.loads((folder / "generation_config.json").read_text()) == after


def _decoding(folder: Path) -> dict[str, dict]:
    """How each reader would decode with ``folder``'s generation config (mode and sampling values)."""
    reports = check_folder(folder, _readers())["reports"]
    return {r["name"]: {k: v for k, v in r["generation"].items() if k not in ("eos_token_ids", "pad_token_id")}
            for r in reports}


@needs_tf4
def test_a_greedy_model_decodes_greedily_under_transformers_4_and_5_before_and_after_repair(tiny_qwen_dir,
                                                                                            tmp_path):
    eot = _eot(tiny_qwen_dir)
    folder = _with_generation_config(tiny_qwen_dir, tmp_path / "base",
                                     {**BASE_GREEDY, "bos_token_id": eot, "eos_token_id": eot})
    before = _decoding(folder)
    assert before["kit"]["mode"] == before["transformers4"]["mode"] == "greedy_search"
    assert run_script("portable.py", str(folder)).returncode == 0
    assert _decoding(folder) == before


@needs_tf4
def test_repair_makes_the_two_readers_agree_on_a_config_they_read_differently(tiny_qwen_dir, tmp_path):
    # An explicit null means "unset" to transformers 5 (greedy, top_k 50) but "off" to transformers
    # 4, which samples when do_sample is not False and applies no top-k when top_k is None.
    eot = _eot(tiny_qwen_dir)
    folder = _with_generation_config(tiny_qwen_dir, tmp_path / "nulls", {"bos_token_id": eot, "eos_token_id": eot,
                                                                       "do_sample": None, "top_k": None})
    before = _decoding(folder)
    assert before["kit"] != before["transformers4"]  # the misreading this repairs
    assert run_script("portable.py", str(folder)).returncode == 0
    after = _decoding(folder)
    assert after["kit"] == after["transformers4"] == before["kit"]  # the kit's decoding is unchanged
    assert check_folder(folder, _readers())["disagreements"]["transformers4"] == []
