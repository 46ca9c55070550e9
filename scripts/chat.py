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

from qwen_kit.chat.cli import ChatConfig, run_chat  # noqa: E402
from qwen_kit.errors import run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> ChatConfig:
    d = ChatConfig()
    p = argparse.ArgumentParser(description="Multi-turn streaming chat. Commands: /reset /history /save FILE /memories [QUERY] /forget ID|all /exit")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="folder, hub id, platform model name, or 'demo' "
                   "(default: Qwen/Qwen2.5-0.5B-Instruct when available, else demo)")
    m.add_argument("--adapter", help="PEFT LoRA adapter folder to apply")
    m.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="bitsandbytes nf4 weights with double quantisation (GPU or CPU); default: on for "
                        "models of 1.5B and up on a Kaggle GPU, off elsewhere")
    m.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    m.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    m.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    g = p.add_argument_group("generation")
    g.add_argument("--system", help="system message (default: the chat template's own)")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--sample-top-k", type=int, default=d.sample_top_k, help="sampling: keep the k likeliest tokens")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    g.add_argument("--greedy", action="store_true", help="deterministic decoding, no sampling")
    g.add_argument("--seed", type=int)
    g.add_argument("--max-context", type=int, help="prompt + answer token budget (default: min(4096, model limit))")
    k = p.add_argument_group("knowledge base")
    k.add_argument("--rag", metavar="DOCS_OR_INDEX", help="answer from a documents folder or a saved index")
    k.add_argument("--top-k", type=int, default=d.top_k, help="chunks retrieved per question")
    k.add_argument("--embedder", help="sentence-transformers model (default: bundled all-MiniLM-L6-v2)")
    k.add_argument("--context-in", default=d.context_in, choices=["user", "system"],
                   help="where retrieved text goes: quoted in the user turn (scored best, docs/knowledge.md) "
                        "or the system message")
    v = p.add_argument_group("persona and long-term memory")
    v.add_argument("--persona", metavar="FILE", help="persona YAML/JSON or a Character Card V2 (data/personas/)")
    v.add_argument("--persona-layout", default=d.persona_layout, choices=["second", "fields"],
                   help="persona as prose addressed to the model, or as labelled card fields")
    v.add_argument("--memory", action="store_true",
                   help="keep rounds that leave the context in chat_history.txt and recall them later")
    v.add_argument("--memory-file", help="memory file (default: chat_history.txt in the platform's working folder)")
    v.add_argument("--user", default=d.user, help="whose memories these are; each user's are kept apart")
    v.add_argument("--memory-top-k", type=int, default=d.memory_top_k, help="memories recalled per turn")
    p.add_argument("--jsonl", action="store_true", help="print one JSON object per turn")
    a = p.parse_args(argv)
    return ChatConfig(**{k: v for k, v in vars(a).items()})


if __name__ == "__main__":
    run_cli(lambda: run_chat(parse_args()), prog="chat.py")
