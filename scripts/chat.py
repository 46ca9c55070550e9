#!/usr/bin/env python
"""Chat with a model in the terminal.

    python scripts/chat.py                          # Qwen2.5-0.5B-Instruct, or the offline demo model
    python scripts/chat.py --model demo --greedy
    printf 'Hi\nWhat did I just say?\n' | python scripts/chat.py --model demo --jsonl
    python scripts/chat.py --persona data/personas/lighthouse_keeper.yaml --memory --user alice
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.chat.pipeline import ChatConfig  # noqa: E402
from qwen_kit.terminal import run_chat  # noqa: E402
from qwen_kit.service.options import (add_backend_options, add_generation_options,  # noqa: E402
                                   add_model_options, add_persona_memory_options, add_retrieval_options)
from qwen_kit.entry import run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> ChatConfig:
    p = argparse.ArgumentParser(description="Multi-turn streaming chat. Commands: /reset /history /save FILE /memories [QUERY] /forget ID|all /exit")
    add_model_options(p)
    add_backend_options(p)
    add_generation_options(p)
    k = add_retrieval_options(p)
    k.add_argument("--rag", metavar="DOCS_OR_INDEX", help="answer from a documents folder or a saved index")
    v = add_persona_memory_options(p)
    v.add_argument("--persona", metavar="FILE", help="persona YAML/JSON or a Character Card V2 (data/personas/)")
    v.add_argument("--memory", action="store_true",
                   help="keep rounds that leave the context in chat_history.txt and recall them later")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per turn")
    return ChatConfig(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    run_cli(lambda: run_chat(parse_args()), prog="chat.py")
