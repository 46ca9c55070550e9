"""Training runs on the tiny model: what changes, what is saved, DDP, resume, equivalences."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen_kit.train.config import TrainConfig
from qwen_kit.train.sft import run_sft
from tests.conftest import ROOT, run_script, train_losses

ROWS = [{"instruction": f"Say the number {i} in words.", "input": "", "output": f"The number is {i}."} for i in range(48)]
ROWS += [{"instruction": "把这句话翻译成英文。", "input": "我喜欢绿茶。", "output": "I like green tea."}] * 8


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), output_dir=str(out), max_len=128, per_device_batch=4,
                learning_rate=1e-3, max_steps=4, eval_share=0.0, save_steps=1000, logging_steps=1, warmup_ratio=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_full_sft_changes_every_parameter_and_saves_a_loadable_model(tiny_qwen_dir, data_file, tmp_path):
    before = load_file(tiny_qwen_dir / "model.safetensors")
    summary = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "run", eval_share=0.1, eval_steps=2))
    after = load_file(tmp_path / "run" / "model.safetensors")
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == [], f"parameters that did not train: {unchanged}"
    assert summary["global_step"] == 4 and summary["trainable_params"] == summary["total_params"]
    # SDPA on CPU: padded batches by default; the figures are the batches' own (tests/train/test_batches.py
    # checks the grouping itself)
    assert summary["packing"] is False and summary["attention"] == "sdpa"
    assert summary["padding_efficiency"] == summary["real_tokens"] / summary["computed_tokens"] <= 1
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    AutoTokenizer.from_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "qwen_kit_config.yaml").is_file()
    assert summary["run_name"] == "tiny-qwen-full-response"
    events = list((tmp_path / "tensorboard" / summary["run_name"]).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0  # TensorBoard logs in a folder named after the run
    assert not (tmp_path / "run" / "runs").exists()  # and nowhere else


def test_lora_changes_only_lora_weights(tiny_qwen_dir, data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "lora", finetune="lora", lora_r=4, learning_rate=1e-2))
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and adapter[k].abs().sum() > 0 for k in adapter)  # B left zero-init
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, tmp_path / "lora")
    for k, v in model.get_base_model().state_dict().items():
        if "lora_" not in k:
            key = k.replace(".base_layer", "")
            assert torch.equal(v, original[key]), f"base weight {key} changed"


def test_the_seed_sets_the_lora_init_also_for_runs_in_one_process(tiny_qwen_dir, data_file, tmp_path):
    # an experiment sweep trains its variants one after another in one process: each must start
    # from the same adapter, and --seed must choose it (learning rate 0: the saved adapter is the init)
    def init(name, seed):
        run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / name, finetune="lora", lora_r=4, learning_rate=0.0,
                     max_steps=1, seed=seed))
        return load_file(tmp_path / name / "adapter_model.safetensors")

    first, second, other = init("a", 42), init("b", 42), init("c", 7)
    a_keys = [k for k in first if "lora_A" in k]
    assert a_keys and all(torch.equal(first[k], second[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in a_keys)


def test_peak_memory_is_the_runs_own_not_the_processs(tiny_qwen_dir, data_file, tmp_path):
    # an experiment sweep trains its variants in one process: what an earlier job held must not
    # show in a later run's figure
    import numpy as np

    def rss_mb() -> float:
        return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024

    big = np.ones(1_500_000_000 // 8)  # 1.5 GB resident, then freed
    del big
    summary = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "run", max_steps=1))
    assert 0 < summary["peak_memory_mb"] < rss_mb() + 500, (summary["peak_memory_mb"], rss_mb())


def test_batch_8_equals_batch_2_times_accumulation_4_on_the_first_step(tiny_qwen_dir, data_file, tmp_path):
    # packed bins drawn by the random sampler: both runs see the same 8 bins on step one
    a = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "b8", per_device_batch=8, grad_accum=1, max_steps=1,
                     packing=True))
    b = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "b2", per_device_batch=2, grad_accum=4, max_steps=1,
                     packing=True))
    la, lb = a["log_history"][0]["loss"], b["log_history"][0]["loss"]
    assert abs(la - lb) < 1e-5, (la, lb)


# replies of 1 to 40 words: a mean per batch or per row would weigh the short replies' tokens up
VARIED = [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(str(k) for k in range(1, i + 1))}
          for i in range(1, 41)]


def test_eval_loss_is_the_mean_over_reply_tokens_whatever_the_eval_batch(tiny_qwen_dir, tmp_path):
    data = tmp_path / "varied.json"
    data.write_text(json.dumps(VARIED), encoding="utf-8")
    # learning rate 0: the same model each time; 10 eval rows, so batch 10 is the plain token mean
    losses = [run_sft(_cfg(tiny_qwen_dir, data, tmp_path / f"b{b}", per_device_batch=b, max_steps=1,
                           learning_rate=0.0, eval_share=0.25, eval_steps=1000))["eval_loss"] for b in (1, 3, 10)]
    assert max(losses) - min(losses) < 1e-5, losses


def test_an_eval_on_the_last_step_is_not_run_again_at_the_end(tiny_qwen_dir, data_file, tmp_path):
    summary = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "run", max_steps=2, eval_share=0.1, eval_steps=2))
    evals = [h for h in summary["log_history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2]  # one point on the curve, one eval's time
    assert summary["eval_loss"] == summary["eval_reply_loss"] == evals[0]["eval_loss"]


def test_gradient_checkpointing_is_on_in_the_model_warns_nothing_and_trains_the_same(tiny_qwen_dir, data_file,
                                                                                       tmp_path, recwarn):
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            name = "is_activation_checkpointing"  # transformers 5's name; 4's is_gradient_checkpointing
            self.on = getattr(model, name if hasattr(type(model), name) else "is_gradient_checkpointing")

    seen = Seen()
    ckpt = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "ckpt", max_steps=2, gradient_checkpointing=True),
                   extra_callbacks=[seen])
    assert seen.on is True
    # transformers 5 renamed the argument; the old name warned on every run
    assert not [w for w in recwarn if "checkpointing" in str(w.message)], [str(w.message) for w in recwarn]
    plain = run_sft(_cfg(tiny_qwen_dir, data_file, tmp_path / "plain", max_steps=2))
    assert train_losses(ckpt) == pytest.approx(train_losses(plain), rel=1e-5)


def test_a_model_finetuned_on_a_few_rows_stops_at_its_end_token(tiny_qwen_dir, tmp_path):
    from qwen_kit.chat.engine import ChatEngine, GenerationSettings
    from qwen_kit.model import load_model

    rows = [{"instruction": "Who are you?", "input": "", "output": "I am a tiny bot."}] * 8
    (tmp_path / "few.json").write_text(json.dumps(rows))
    run_sft(_cfg(tiny_qwen_dir, tmp_path / "few.json", tmp_path / "few", max_steps=150, learning_rate=3e-3,
                 per_device_batch=8))
    loaded = load_model(str(tmp_path / "few"), quiet=True)
    engine = ChatEngine(loaded.model, loaded.tokenizer, settings=GenerationSettings(max_new_tokens=40, greedy=True,
                                                                                repetition_penalty=1.0),
                        eos_token_ids=loaded.eos_token_ids)
    turn = engine.start_turn("Who are you?")
    turn.run()
    assert turn.text.strip() == "I am a tiny bot."
    assert turn.stats.stopped_at_eos and turn.stats.new_tokens < 40


def test_two_process_ddp_trains_and_writes_one_model(tiny_qwen_dir, data_file, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "QWEN_KIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "scripts" / "sft.py"), "--model", str(tiny_qwen_dir), "--data", str(data_file),
           "--output-dir", str(out), "--max-steps", "3", "--per-device-batch", "2", "--max-len", "128",
           "--eval-share", "0", "--finetune", "lora", "--lora-r", "4", "--logging-steps", "1"]
    res = subprocess.run(cmd, capture_output=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    # both ranks' batches are counted, in the log lines as in the summary
    assert summary["real_tokens"] <= summary["computed_tokens"] and summary["computed_tokens"] > 0
    logged = [h for h in summary["log_history"] if "tokens/real" in h]
    assert [h["step"] for h in logged] == [1, 2, 3] and logged[-1]["tokens/real"] == summary["real_tokens"]
    assert (out / "adapter_model.safetensors").is_file()
    assert res.stderr.decode().count("saved to ") == 1  # only rank 0 saves


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_qwen_dir, data_file, tmp_path):
    out = tmp_path / "killed"
    args = ["--model", str(tiny_qwen_dir), "--data", str(data_file), "--output-dir", str(out), "--max-steps", "400",
            "--save-steps", "5", "--per-device-batch", "2", "--max-len", "128", "--eval-share", "0",
            "--logging-steps", "50"]
    env = {**os.environ, "QWEN_KIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sft.py"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert done and done[-1] < 400, "the run should have been killed before it finished"
    again = run_script("sft.py", *args, env=env)  # without --resume the folder is protected
    assert again.returncode == 2 and b"pass --resume" in again.stderr
    res = run_script("sft.py", *args, "--resume", "latest", env=env)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["global_step"] == 400
    assert Path(summary["resumed_from"]).name.startswith("checkpoint-")
    assert int(Path(summary["resumed_from"]).name.split("-")[1]) >= done[-1]


def test_bad_options_are_one_line_errors(tiny_qwen_dir, data_file, tmp_path):
    res = run_script("sft.py", "--model", str(tiny_qwen_dir), "--data", str(data_file), "--output-dir",
                     str(tmp_path / "x"), "--finetune", "lora", "--lora-targets", "q_proj", "qkv_proj")
    assert res.returncode == 2 and b"qkv_proj do not exist" in res.stderr and b"Traceback" not in res.stderr
    res = run_script("sft.py", "--model", str(tiny_qwen_dir), "--data", str(tmp_path / "missing.json"))
    assert res.returncode == 2 and b"missing.json does not exist" in res.stderr


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill(tmp_path):
    from qwen_kit.train.sft import latest_complete_checkpoint

    for step, complete in ((5, True), (10, True), (15, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
