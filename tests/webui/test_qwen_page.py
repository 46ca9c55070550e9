"""The web page on the real Qwen2.5-Coder-0.5B-Instruct: scripts/webui.py in a subprocess, asked
through gradio's own client (the page's API is the page), answers from the knowledge base."""

from __future__ import annotations

import json

import pytest

from tests.conftest import QWEN
from tests.serve.test_qwen_api import BOOKS, TWELVE

pytestmark = pytest.mark.qwen


def test_the_web_page_answers_from_the_knowledge_base(qwen_dir, tmp_path):
    from gradio_client import Client

    from tests.webui.conftest import start_server, stop_server

    proc, url = start_server(["--model", QWEN, "--kb", "data/knowledge", "--memory-file", str(tmp_path / "mem.txt"),
                              "--max-new-tokens", "40"], tmp_path / "webui.log", timeout=600)
    try:
        page = Client(url, verbose=False)
        page.predict(BOOKS, "(none)", "knowledge", False, True,
                     0.7, 0.8, 20, 1.05, 40, api_name="/send")
        exported = page.predict("(none)", "knowledge", False, api_name="/on_export")
        path = exported["value"] if isinstance(exported, dict) else exported
        with open(path, encoding="utf-8") as f:
            rounds = json.load(f)["rounds"]
    finally:
        stop_server(proc)
    assert TWELVE.search(rounds[0]["assistant"]), rounds
