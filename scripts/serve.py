#!/usr/bin/env python
"""An OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) over the kit's chat:
the openai client, Open WebUI, SillyTavern and LangChain can talk to a fine-tuned model, with
the knowledge bases, personas and long-term memory given here. Requests that arrive together
are generated together.

    python scripts/serve.py --model demo --kb data/knowledge --personas data/personas
    QWEN_KIT_API_KEYS=$(cat ~/.qwen_kit_key) python scripts/serve.py --model outputs/sft/final   # AutoDL: port 6006
    python scripts/serve.py --backend vllm --model Qwen/Qwen2.5-1.5B-Instruct --tensor-parallel 2
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.chat.pipeline import ChatConfig  # noqa: E402
from qwen_kit.service.options import add_service_options, split_service_args  # noqa: E402
from qwen_kit.entry import run_cli  # noqa: E402

def parse_args(argv: list[str] | None = None):
    from qwen_kit.serve.server import API_KEYS_ENV, ServeConfig

    p = argparse.ArgumentParser(description="OpenAI-compatible API server over the qwen_kit chat pipeline.")
    s = add_service_options(p, offered="the API offers as model kb:NAME / persona:NAME", default_port=8000,
                            memory_help="long-term memory on for every request (else: model NAME+memory or "
                                        "\"qwen_kit\": {\"memory\": true}); OpenAI's 'user' field says whose")
    s.add_argument("--api-key-file", metavar="FILE",
                   help=f"accepted keys, one KEY or NAME:KEY per line (or set {API_KEYS_ENV}=KEY,...)")
    s.add_argument("--no-auth", action="store_true", help="serve beyond localhost without a key")
    s.add_argument("--served-name", help="the plain model's name in /v1/models (default: the model's)")
    s.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME[,NAME]",
                   help="Host names answered besides localhost and --host (e.g. the name a proxy or AutoDL "
                        "forwards as; .example.com: that domain and its subdomains; *: any)")
    s.add_argument("--allowed-origins", action="append", default=[], metavar="ORIGIN[,ORIGIN]",
                   help="web pages (scheme://host[:port]) allowed to call the API from a browser; *: any")
    s.add_argument("--max-waiting", type=int, default=ServeConfig.max_waiting,
                   help="requests that may wait for a free slot; more get 503 with Retry-After")
    a = vars(p.parse_args(argv))
    serve = split_service_args(a, ("api_key_file", "no_auth", "served_name", "allowed_hosts", "allowed_origins",
                                   "max_waiting"))
    return ServeConfig(chat=ChatConfig(**a), **serve)


if __name__ == "__main__":
    from qwen_kit.serve.server import run_server

    run_cli(lambda: run_server(parse_args()), prog="serve.py")
