"""The engine arguments the kit gives vLLM (vLLM itself needs a GPU: not installed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_kit.errors import UserError
from qwen_kit.generation.vllm import engine_args

ROOT = Path(__file__).resolve().parents[2]


def test_a_t4_gets_half_and_ampere_gets_bfloat16():
    assert engine_args("m", capability=(7, 5))["dtype"] == "half"  # T4: no bfloat16
    assert engine_args("m", capability=(8, 0))["dtype"] == "bfloat16"  # A100
    assert engine_args("m", capability=(8, 9))["dtype"] == "bfloat16"  # L20 / 4090


def test_tensor_parallel_is_checked_against_the_gpus():
    assert engine_args("m", capability=(8, 0), tensor_parallel=4, gpus=6)["tensor_parallel_size"] == 4
    with pytest.raises(UserError, match="this machine has 2 GPU"):
        engine_args("m", capability=(8, 0), tensor_parallel=4, gpus=2)
    with pytest.raises(UserError, match="needs an NVIDIA GPU"):
        engine_args("m", capability=None)


def test_a_lora_adapter_enables_lora_with_its_own_rank(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64, "lora_alpha": 128}))
    args = engine_args("m", capability=(7, 5), adapter=str(tmp_path))
    assert args["enable_lora"] is True and args["max_lora_rank"] == 64
    assert "enable_lora" not in engine_args("m", capability=(7, 5))
    with pytest.raises(UserError, match="adapter_config.json"):
        engine_args("m", capability=(7, 5), adapter=str(tmp_path / "missing"))


def test_4bit_and_context_follow_the_kits_flags():
    args = engine_args("m", capability=(7, 5), load_in_4bit=True, max_context=2048)
    assert args["quantization"] == "bitsandbytes" and args["max_model_len"] == 2048


def test_serve_py_without_vllm_says_how_to_install_it():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/serve.py"), "--backend", "vllm", "--model", "demo"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pip install vllm" in out.stderr and "Traceback" not in out.stderr
