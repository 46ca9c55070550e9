"""Kaggle: the adapter on a fake /kaggle tree, uploads and pushes through a fake `kaggle`
executable that records its arguments, metadata checked by the real kaggle CLI, and the pushed
kernel script run locally against the fake tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from platforms.kaggle import KagglePlatform
from tests.conftest import ROOT, make_dry_run, run_script

KEY = "kq9-very-secret-key-771"
TOKEN = "KGAT_token_abc123_secret"

FAKE_KAGGLE = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_KAGGLE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
state = os.environ["FAKE_KAGGLE_STATE"]
existing = open(state).read().split() if os.path.exists(state) else []
if os.environ.get("FAKE_KAGGLE_FAIL"):
    # a CLI that echoes the key in its error, to prove the kit never passes it on
    print("401 Unauthorized for key " + os.environ.get("KAGGLE_KEY", ""), file=sys.stderr)
    sys.exit(1)
if args[:2] == ["datasets", "status"]:
    if args[2] in existing:
        print("ready")
        sys.exit(0)
    print("404 Client Error: Not Found", file=sys.stderr)
    sys.exit(1)
if args[:2] == ["datasets", "create"]:
    meta = json.load(open(os.path.join(args[args.index("-p") + 1], "dataset-metadata.json")))
    with open(state, "a") as f:
        f.write(meta["id"] + "\\n")
print("ok: " + " ".join(args[:2]))
"""


@pytest.fixture
def fake_kaggle(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(FAKE_KAGGLE.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "kaggle_calls.jsonl"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_KAGGLE_LOG": str(log),
           "FAKE_KAGGLE_STATE": str(tmp_path / "kaggle_state"), "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": KEY,
           "KAGGLE_API_TOKEN": TOKEN}

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


@pytest.fixture
def fake_tree(tmp_path, tiny_qwen_dir):
    """/kaggle with inputs in every mount shape Kaggle uses."""
    root = tmp_path / "kaggle"
    inp = root / "input"
    shutil.copytree(tiny_qwen_dir, inp / "models/qwen-lm/qwen2.5/transformers/1.5b-instruct/1")
    shutil.copytree(tiny_qwen_dir, inp / "models/qwen-lm/qwen2.5/transformers/1.5b/1")
    shutil.copytree(tiny_qwen_dir, inp / "qwen-lm/qwen2.5/transformers/0.5b-instruct/2")  # older: no models/
    (inp / "datasets/alice/my-lora-adapter/checkpoint").mkdir(parents=True)
    (inp / "datasets/alice/my-lora-adapter/checkpoint/adapter_config.json").write_text("{}")
    shutil.copytree(ROOT / "data" / "knowledge", inp / "campus-docs")  # older dataset mount: /kaggle/input/<slug>
    (root / "working").mkdir()
    return root


def test_the_adapter_finds_models_adapters_and_datasets_by_searching(fake_tree, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_KAGGLE_ROOT", str(fake_tree))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.delenv("QWEN_KIT_PLATFORM", raising=False)
    from platforms import current_platform

    p = current_platform()
    assert p.name == "kaggle" and p.working_dir() == fake_tree / "working"
    inp = fake_tree / "input"
    assert p.find_model("Qwen/Qwen2.5-1.5B-Instruct") == inp / "models/qwen-lm/qwen2.5/transformers/1.5b-instruct/1"
    assert p.find_model("Qwen2.5-1.5B") == inp / "models/qwen-lm/qwen2.5/transformers/1.5b/1"  # closest match
    assert p.find_model("qwen2.5-0.5b-instruct") == inp / "qwen-lm/qwen2.5/transformers/0.5b-instruct/2"
    assert p.find_model("Qwen2.5-3B-Instruct") is None
    assert p.adapter_folders() == [inp / "datasets/alice/my-lora-adapter/checkpoint"]
    assert p.find_dataset("alice/my-lora-adapter") == inp / "datasets/alice/my-lora-adapter"
    assert p.find_dataset("bob/campus-docs") == inp / "campus-docs"
    assert p.prefers_4bit(1.54e9) and not p.prefers_4bit(0.49e9)


def test_a_mounted_model_loads_by_its_hub_name(fake_tree, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_KAGGLE_ROOT", str(fake_tree))
    from qwen_kit.model import load_model

    loaded = load_model("Qwen/Qwen2.5-1.5B-Instruct", platform=KagglePlatform(), quiet=True)
    assert loaded.ref.source == "platform" and loaded.ref.path.parts[-2:] == ("1.5b-instruct", "1")
    assert not loaded.precision.load_in_4bit  # the tiny model is small, and this is a CPU


def test_upload_creates_then_versions_always_zipping_subfolders(tmp_path, fake_kaggle, tiny_qwen_dir):
    env, calls = fake_kaggle
    folder = tmp_path / "adapter"
    shutil.copytree(tiny_qwen_dir, folder / "nested")
    first = run_script("kaggle.py", "upload", str(folder), "alice/qwen25-lora-adapter", env=env)
    assert first.returncode == 0, first.stderr.decode()
    second = run_script("kaggle.py", "upload", str(folder), "alice/qwen25-lora-adapter", "--message", "epoch 2", env=env)
    assert second.returncode == 0, second.stderr.decode()
    assert calls() == [
        ["datasets", "status", "alice/qwen25-lora-adapter"],
        ["datasets", "create", "-p", str(folder), "-r", "zip"],
        ["datasets", "status", "alice/qwen25-lora-adapter"],
        ["datasets", "version", "-p", str(folder), "-m", "epoch 2", "-r", "zip"]]
    meta = json.loads((folder / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/qwen25-lora-adapter" and 6 <= len(meta["title"]) <= 50
    assert meta["licenses"] == [{"name": "apache-2.0"}]


@pytest.mark.parametrize("args, message", [
    (["alice/short"], "6 to 50 characters"),
    (["Alice Smith/my-dataset"], "must look like owner/name"),
    (["alice/good-slug-here", "--license", "WTFPL"], "is not one Kaggle accepts"),
])
def test_bad_upload_arguments_are_one_line_errors(tmp_path, fake_kaggle, args, message):
    env, calls = fake_kaggle
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    res = run_script("kaggle.py", "upload", str(tmp_path / "d"), *args, env=env)
    err = res.stderr.decode().strip()
    assert res.returncode == 2 and message in err and len(err.splitlines()) == 1 and calls() == []


def _push(tmp_path, env, *extra):
    return run_script("kaggle.py", "push", "alice/qwen-kit-rag", "--job", "rag", "--model",
                      "Qwen/Qwen2.5-1.5B-Instruct", "--docs", "alice/campus-docs", "--adapter", "alice/qwen25-lora",
                      "--kaggle-model", "qwen-lm/qwen2.5/transformers/1.5b-instruct/1", "--out",
                      str(tmp_path / "kernel"), *extra, env=env)


def test_push_builds_a_t4_kernel_and_runs_kernels_push(tmp_path, fake_kaggle):
    env, calls = fake_kaggle
    res = _push(tmp_path, env)
    assert res.returncode == 0, res.stderr.decode()
    assert calls() == [["kernels", "push", "-p", str(tmp_path / "kernel")]]
    meta = json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == "alice/qwen-kit-rag" and meta["code_file"] == "run.py"
    assert (tmp_path / "kernel" / meta["code_file"]).is_file()
    assert meta["language"] == "python" and meta["kernel_type"] == "script" and meta["is_private"] is True
    assert meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["enable_internet"] is True  # set explicitly, never left to the server's default
    assert meta["dataset_sources"] == ["alice/qwen25-lora", "alice/campus-docs"]
    assert meta["model_sources"] == ["qwen-lm/qwen2.5/transformers/1.5b-instruct/1"]


def test_a_dry_run_writes_the_folder_and_only_prints_the_command(tmp_path, fake_kaggle):
    env, calls = fake_kaggle
    res = _push(tmp_path, env, "--dry-run", "--no-internet")
    assert res.returncode == 0 and calls() == []
    assert f"kaggle kernels push -p {tmp_path / 'kernel'}" in res.stdout.decode()
    assert json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())["enable_internet"] is False


def test_make_kaggle_push_passes_its_variables():
    out = make_dry_run("kaggle-push", "KERNEL=alice/qwen-kit-rag", "JOB=rag", "DOCS=alice/campus-docs", "DRY_RUN=1")
    line = next(ln for ln in out.splitlines() if "scripts/kaggle.py" in ln)
    assert ("scripts/kaggle.py push alice/qwen-kit-rag --job rag --model Qwen/Qwen2.5-1.5B-Instruct "
            "--docs alice/campus-docs --dry-run") in " ".join(line.split())


def test_no_credential_reaches_a_file_or_an_output(tmp_path, fake_kaggle):
    env, _ = fake_kaggle
    res = _push(tmp_path, {**env, "FAKE_KAGGLE_FAIL": "1"})
    out = res.stdout.decode() + res.stderr.decode()
    assert res.returncode == 2 and "401 Unauthorized for key ***" in out
    assert KEY not in out and TOKEN not in out
    for path in (tmp_path / "kernel").rglob("*"):
        text = path.read_text(encoding="utf-8", errors="replace")
        assert KEY not in text and TOKEN not in text


def _real_kaggle() -> Path:
    exe = Path(sys.executable).with_name("kaggle")
    if not exe.is_file():
        pytest.skip("the kaggle CLI is not installed (pip install -e .[dev])")
    return exe


def _validate(cmd: list[str], tmp_path: Path) -> str:
    """Run the real kaggle CLI with dummy credentials and a closed loopback proxy: it checks the
    metadata locally, and a valid folder fails only when it tries to connect."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "dummy",
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return res.stdout + res.stderr


def test_the_real_kaggle_cli_accepts_the_metadata(tmp_path):
    from qwen_kit.kaggle.publish import KernelSpec, build_kernel, write_dataset_metadata

    kaggle = str(_real_kaggle())
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "data" / "knowledge", docs)
    write_dataset_metadata(docs, "alice/campus-docs")
    out = _validate([kaggle, "datasets", "create", "-p", str(docs), "-r", "zip"], tmp_path)
    assert "proxy" in out.lower() and "must" not in out.lower(), out[-500:]
    kernel = build_kernel(KernelSpec("alice/qwen-kit-rag", "rag", docs="alice/campus-docs",
                                     models=["qwen-lm/qwen2.5/transformers/1.5b-instruct/1"]), tmp_path / "kernel")
    out = _validate([kaggle, "kernels", "push", "-p", str(kernel)], tmp_path)
    assert "proxy" in out.lower() and "must" not in out.lower(), out[-500:]
    # the validator is really on: a title Kaggle refuses is caught before any request
    meta = json.loads((docs / "dataset-metadata.json").read_text())
    (docs / "dataset-metadata.json").write_text(json.dumps({**meta, "title": "Docs"}))
    assert "title must be between 6 and 50" in _validate([kaggle, "datasets", "create", "-p", str(docs)], tmp_path)


def _run_kernel(tmp_path, fake_tree, job, **spec):
    from qwen_kit.kaggle.publish import KernelSpec, build_kernel

    folder = build_kernel(KernelSpec(f"alice/qwen-kit-{job}", job, "demo", max_new_tokens=12, **spec),
                          tmp_path / f"kernel-{job}")
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "QWEN_KIT_KAGGLE_ROOT": str(fake_tree), "KAGGLE_KERNEL_RUN_TYPE": "Batch",
           "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1", "KAGGLE_KEY": KEY}
    env.pop("QWEN_KIT_PLATFORM", None)
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, str(folder / "run.py")], cwd=scratch, capture_output=True, timeout=600, env=env)
    return res, json.loads((fake_tree / "working" / "qwen_kit_job.json").read_text())


@pytest.mark.slow  # the kernel runs the demo model
def test_the_kernel_script_runs_a_knowledge_base_chat_on_the_fake_tree(tmp_path, fake_tree):
    res, summary = _run_kernel(tmp_path, fake_tree, "rag", docs="bob/campus-docs",
                               messages=["When does the library close on weekdays?"])
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert summary["status"] == "ok" and summary["docs_path"] == str(fake_tree / "input" / "campus-docs")
    assert summary["kit"].startswith(str(tmp_path / "scratch"))  # the kit the script carries, not this checkout
    turns = [json.loads(line) for line in (fake_tree / "working" / "transcript.jsonl").read_text().splitlines()]
    assert turns[0]["user"] == "When does the library close on weekdays?" and turns[0]["assistant"]
    assert turns[0]["sources"][0]["file"] == "library.md"
    assert KEY not in res.stdout.decode() + res.stderr.decode()


@pytest.mark.slow  # the kernel runs the demo model
def test_the_kernel_script_keeps_memory_in_the_working_folder(tmp_path, fake_tree):
    res, summary = _run_kernel(tmp_path, fake_tree, "memory",
                               messages=["My sister Ingrid lives in Tromsø.", "Where does my sister live?"])
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    history = (fake_tree / "working" / "chat_history.txt").read_text(encoding="utf-8")
    assert "Tromsø" in history and str(fake_tree / "working" / "chat_history.txt") in summary["outputs"]


def test_the_lora_job_uses_both_t4s_through_torchrun(tmp_path):
    from qwen_kit.kaggle.job import lora_command

    overrides = {"model": "Qwen/Qwen2.5-1.5B-Instruct", "output_dir": "/kaggle/working/runs/lora",
                 "data": "/kaggle/input/d/train.json", "finetune": "qlora"}
    cmd = lora_command("configs/lora_qwen2.5_1.5b.yaml", overrides, ROOT, gpus=2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5].endswith("scripts/sft.py") and "--finetune=qlora" in cmd and "--data=/kaggle/input/d/train.json" in cmd
    assert lora_command("configs/lora_qwen2.5_1.5b.yaml", overrides, ROOT, gpus=1) is None
    # the flags are real sft.py flags: its parser accepts them
    res = run_script("sft.py", *cmd[6:], "--help")
    assert res.returncode == 0, res.stderr.decode()


def test_make_sft_asks_torchrun_for_one_process_per_visible_gpu(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Tesla T4 (UUID: GPU-a)'\necho 'GPU 1: Tesla T4 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "GPUS")}
    run = lambda *a, path: subprocess.run(["make", "--no-print-directory", "-n", "sft", *a], cwd=ROOT, text=True,  # noqa: E731
                                          capture_output=True, env={**env, "PATH": path}).stdout
    two = run(path=f"{fake}:{env['PATH']}")
    assert "torchrun" in two and "--nproc_per_node=2" in two
    assert "torchrun" not in run("GPUS=1", path=f"{fake}:{env['PATH']}")
    none = tmp_path / "nogpu"
    none.mkdir()
    assert "torchrun" not in run(path=f"{none}:/usr/bin:/bin")  # no nvidia-smi at all: one plain process


def test_a_failed_jobs_report_and_log_carry_no_secret(tmp_path, fake_tree, monkeypatch, capsys):
    from qwen_kit.kaggle.job import run_job
    from qwen_kit.privacy import redact

    monkeypatch.setenv("QWEN_KIT_KAGGLE_ROOT", str(fake_tree))
    monkeypatch.setenv("KAGGLE_KEY", "k3y-" + "9" * 28)
    monkeypatch.setenv("QWEN_KIT_WEBUI_AUTH", "ann:hunter2-long")
    secret = "k3y-" + "9" * 28
    # an error whose text holds both secrets, as a library message quoting a URL or a config might
    code = run_job({"job": f"https://ann:hunter2-long@example.invalid/{secret}", "model": "m"}, str(tmp_path))
    report = (fake_tree / "working" / "qwen_kit_job.json").read_text()
    out = capsys.readouterr()
    assert code == 2 and "unknown job" in report
    for text in (report, out.out, out.err):
        assert secret not in text and "hunter2-long" not in text
    assert redact("see https://u:p4ss@host/x") == "see https://***@host/x"


def _kit_members(folder):
    import base64
    import io
    import re
    import zipfile

    code = (folder / "run.py").read_text(encoding="utf-8")
    blob = re.search(r'KIT = "([A-Za-z0-9+/=]+)"', code).group(1)
    return code, zipfile.ZipFile(io.BytesIO(base64.b64decode(blob))).namelist()


def _git_status(path: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", str(path)], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def test_a_kernel_carries_only_what_its_job_needs_and_pins_what_it_installs(tmp_path, monkeypatch):
    from qwen_kit.kaggle import publish
    from qwen_kit.kaggle.publish import KernelSpec, build_kernel

    # A copy of the checkout, so the user's own data can be placed in its data/ without
    # touching this repository's.
    kit = tmp_path / "checkout"
    for part in ("qwen_kit", "platforms", "data", "configs", "scripts", "requirements"):
        shutil.copytree(ROOT / part, kit / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(publish, "REPO", kit)
    (kit / "data" / "my_private_rows.json").write_text("[]", encoding="utf-8")  # a user's own data
    repo_data = _git_status(ROOT / "data")

    code, chat = _kit_members(build_kernel(KernelSpec("alice/qwen-kit-chat", "chat"), tmp_path / "chat"))
    _, lora = _kit_members(build_kernel(KernelSpec("alice/qwen-kit-lora", "lora"), tmp_path / "lora"))
    _, persona = _kit_members(build_kernel(KernelSpec("alice/qwen-kit-persona", "persona"), tmp_path / "p"))
    assert _git_status(ROOT / "data") == repo_data
    assert not [m for m in chat if m.startswith(("data/", "configs/"))], chat
    assert any(m.startswith("qwen_kit/") for m in chat) and any(m.startswith("platforms/") for m in chat)
    assert "data/sample_alpaca.json" in lora and "configs/lora_qwen2.5_1.5b.yaml" in lora and "scripts/sft.py" in lora
    assert "data/my_private_rows.json" not in lora + persona
    assert "data/personas/lighthouse_notes/logbook.md" in persona
    lock = {ln.split("==")[0].lower(): ln.strip() for ln in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
            if "==" in ln}
    assert f"'{lock['peft']}'" in code and f"'{lock['faiss-cpu']}'" in code  # pinned to the tested versions


def test_a_local_folder_given_as_a_dataset_stops_with_the_upload_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    res = subprocess.run(["make", "--no-print-directory", "kaggle-push", "KERNEL=alice/qwen-kit-rag", "JOB=rag",
                          "DOCS=data/knowledge", "DRY_RUN=1", f"ARGS=--out {tmp_path / 'k'}"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    err = [ln for ln in res.stderr.splitlines() if "kaggle.py" in ln]
    assert res.returncode != 0 and len(err) == 1, res.stderr
    assert "DOCS=data/knowledge is a folder on this machine" in err[0]
    assert "make kaggle-upload DIR=data/knowledge SLUG=alice/knowledge" in err[0]
    assert not (tmp_path / "k").exists()  # nothing written
