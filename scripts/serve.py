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

from qwen_kit.chat.cli import ChatConfig  # noqa: E402
from qwen_kit.chat.options import (add_backend_options, add_generation_options,  # noqa: E402
                                   add_model_options, add_persona_memory_options, add_retrieval_options)
from qwen_kit.entry import run_cli  # noqa: E402

SERVE_FIELDS = ("kb", "personas", "memory", "host", "port", "api_key_file", "no_auth", "served_name", "max_batch")


def parse_args(argv: list[str] | None = None):
    from qwen_kit.serve.server import API_KEYS_ENV, ServeConfig

    p = argparse.ArgumentParser(description="OpenAI-compatible API server over the qwen_kit chat pipeline.")
    add_model_options(p)
    add_backend_options(p)
    add_generation_options(p)
    k = add_retrieval_options(p)
    k.add_argument("--kb", action="append", default=[], metavar="DOCS_OR_INDEX",
                   help="a knowledge base the API offers as model kb:NAME (repeat for several)")
    v = add_persona_memory_options(p)
    v.add_argument("--personas", action="append", default=[], metavar="FILE_OR_FOLDER",
                   help="personas the API offers as model persona:NAME (files, or folders of them)")
    v.add_argument("--memory", action="store_true", help="long-term memory on for every request (else: model "
                   "NAME+memory or \"qwen_kit\": {\"memory\": true}); OpenAI's 'user' field says whose")
    s = p.add_argument_group("server")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 on AutoDL)")
    s.add_argument("--port", type=int, help="port (default 8000; 6006 on AutoDL)")
    s.add_argument("--api-key-file", metavar="FILE",
                   help=f"accepted keys, one KEY or NAME:KEY per line (or set {API_KEYS_ENV}=KEY,...)")
    s.add_argument("--no-auth", action="store_true", help="serve beyond localhost without a key")
    s.add_argument("--served-name", help="the plain model's name in /v1/models (default: the model's)")
    s.add_argument("--max-batch", type=int, default=ServeConfig.max_batch,
                   help="requests generated together (more wait in line)")
    a = vars(p.parse_args(argv))
    serve = {name: a.pop(name) for name in SERVE_FIELDS}
    serve["knowledge"] = serve.pop("kb")
    return ServeConfig(chat=ChatConfig(**a), **serve)


if __name__ == "__main__":
    from qwen_kit.serve.server import run_server

    run_cli(lambda: run_server(parse_args()), prog="serve.py")
