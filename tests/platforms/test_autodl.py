"""The AutoDL adapter, run inside a fake AutoDL tree (QWEN_KIT_AUTODL_ROOT)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from platforms import AutoDLPlatform, current_platform
from tests.conftest import make_dry_run, run_script


@pytest.fixture
def autodl(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "autodl-tmp" / "models").mkdir(parents=True)
    turbo = tmp_path / "network_turbo"
    turbo.write_text("export http_proxy=http://172.20.0.113:12798 && export https_proxy=http://172.20.0.113:12798\n")
    monkeypatch.setenv("QWEN_KIT_AUTODL_ROOT", str(root))
    monkeypatch.setenv("QWEN_KIT_AUTODL_TURBO", str(turbo))
    monkeypatch.setenv("AutoDLContainerUUID", "test-container")
    monkeypatch.delenv("QWEN_KIT_PLATFORM", raising=False)
    monkeypatch.delenv("QWEN_KIT_CACHE", raising=False)
    return root


def test_paths_resolve_inside_the_autodl_tree(autodl, tiny_qwen_dir):
    from qwen_kit.model.resolve import resolve_model

    p = current_platform()
    assert isinstance(p, AutoDLPlatform)
    shutil.copytree(tiny_qwen_dir, autodl / "autodl-tmp" / "models" / "Qwen2.5-1.5B")
    assert resolve_model("Qwen/Qwen2.5-1.5B", p).path == (autodl / "autodl-tmp" / "models" / "Qwen2.5-1.5B").resolve()
    assert p.output_dir() == autodl / "autodl-tmp" / "output"
    assert p.cache_dir() == autodl / "autodl-tmp" / "cache" / "qwen_kit"
    assert p.env_defaults()["HF_HOME"].startswith(str(autodl / "autodl-tmp"))
    assert autodl / "tf-logs" / "run1" in p.tensorboard_dirs(p.output_dir(), "run1")
    assert p.hub_download_env() == {"http_proxy": "http://172.20.0.113:12798",
                                    "https_proxy": "http://172.20.0.113:12798"}


def test_a_lora_run_on_autodl_finds_train_csv_and_writes_where_autodl_looks(autodl, tiny_qwen_dir):
    shutil.copytree(tiny_qwen_dir, autodl / "autodl-tmp" / "models" / "Qwen2.5-1.5B")
    (autodl / "autodl-tmp" / "train.csv").write_text(
        "instruction,input,output\n" + "".join(f"Question {i}?,,Answer {i}.\n" for i in range(20)))
    res = run_script("sft.py", "--model", "Qwen/Qwen2.5-1.5B", "--data", "train.csv", "--finetune", "lora",
                     "--lora-r", "4", "--max-steps", "2", "--per-device-batch", "2", "--max-len", "256",
                     "--eval-share", "0", "--run-name", "lora-test", cwd=autodl)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    out = autodl / "autodl-tmp" / "output" / "lora-test"
    assert (out / "adapter_model.safetensors").is_file()
    assert list((autodl / "tf-logs" / "lora-test").glob("events.out.tfevents.*"))  # AutoDL's panel
    assert list((autodl / "autodl-tmp" / "output" / "tensorboard" / "lora-test").glob("events.out.tfevents.*"))
    assert list((autodl / "autodl-tmp" / "cache" / "qwen_kit" / "tokenized").glob("*.npz"))  # cache on the data disk


def test_download_uses_the_proxy_only_for_the_download_process(autodl, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "modelscope_calls.json"
    fake = bin_dir / "modelscope"
    fake.write_text(f"""#!/usr/bin/env python3
import json, os, sys, pathlib
args = sys.argv[1:]
json.dump({{"args": args, "https_proxy": os.environ.get("https_proxy")}}, open({str(log)!r}, "w"))
dest = pathlib.Path(args[args.index("--local_dir") + 1]); dest.mkdir(parents=True, exist_ok=True)
(dest / "config.json").write_text("{{}}")
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("https_proxy", None)
    monkeypatch.delenv("https_proxy", raising=False)
    res = run_script("download.py", "Qwen/Qwen2.5-3B-Instruct", env=env)
    assert res.returncode == 0, res.stderr.decode()
    call = json.loads(log.read_text())
    dest = autodl / "autodl-tmp" / "models" / "Qwen2.5-3B-Instruct"
    assert call["args"] == ["download", "--model", "Qwen/Qwen2.5-3B-Instruct", "--local_dir", str(dest)]
    assert call["https_proxy"] == "http://172.20.0.113:12798"
    # in this process too (the library call itself, not a child): the proxy went to the download
    # process alone and the environment training and chat inherit is unchanged
    from qwen_kit.model.download import download_model

    monkeypatch.setenv("PATH", env["PATH"])
    before = dict(os.environ)
    download_model("Qwen/Qwen2.5-0.5B", "modelscope")
    assert json.loads(log.read_text())["https_proxy"] == "http://172.20.0.113:12798"
    assert dict(os.environ) == before and "https_proxy" not in os.environ


def test_download_without_any_client_says_what_to_install(autodl, tmp_path):
    res = run_script("download.py", "Qwen/Qwen2.5-3B", "--source", "modelscope",
                     env={"PATH": str(tmp_path)})  # no modelscope anywhere on PATH
    assert res.returncode == 2 and b"pip install modelscope" in res.stderr


def _make_dry_run(*args: str) -> str:
    """The sft.py launch line that `make -n` prints."""
    return next(line for line in make_dry_run(*args).splitlines() if "scripts/sft.py" in line)


@pytest.mark.parametrize("gpus", ["6", "2"])
def test_make_autodl_lora_asks_torchrun_for_one_process_per_gpu(gpus):
    out = _make_dry_run("autodl-lora", f"GPUS={gpus}", "MODEL=qwen2.5-3b")
    assert "torchrun" in out and f"--nproc_per_node={gpus}" in out
    assert "scripts/sft.py --config configs/lora_qwen2.5_3b.yaml" in out
    single = _make_dry_run("autodl-lora", "GPUS=1")
    assert "torchrun" not in single and "configs/lora_qwen2.5_1.5b.yaml" in single
