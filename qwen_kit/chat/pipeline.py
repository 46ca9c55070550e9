"""The chat pipeline: a configuration (every ``chat.py`` flag), the model it names, and
:func:`assemble_chat`, which joins knowledge base, persona, memory and a generation backend into
one conversation. The conversation service (:mod:`qwen_kit.service`) builds every conversation of
the terminal, the web page and the API server through it."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qwen_kit.chat.engine import ChatEngine, GenerationSettings
from qwen_kit.errors import UserError
from qwen_kit.model import DEMO, LoadOptions, load_model
from qwen_kit.model.resolve import DEFAULT_CHAT_MODEL, default_chat_model

@dataclass
class ChatConfig:
    """Everything ``scripts/chat.py`` accepts; each field is one flag."""

    model: str | None = None
    adapter: str | None = None
    load_in_4bit: bool | None = None  # None: the platform default (Kaggle: 1.5B and up on a GPU)
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    system: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    sample_top_k: int = 20
    repetition_penalty: float = 1.05
    penalize_prompt: bool = False  # the repetition penalty also counts the prompt's tokens (generate's way)
    greedy: bool = False
    seed: int | None = None
    max_context: int | None = None
    jsonl: bool = False
    rag: str | None = None
    top_k: int = 4
    embedder: str | None = None
    context_in: str = "user"
    kb_layout: str = "numbered"  # numbered sources + instruction, or plain/brief (texts, best last)
    kb_min_ratio: float = 0.0  # adaptive k: drop passages scoring below this share of the best
    persona: str | None = None
    fusion: str | None = None  # score, rrf or weighted; None: a saved index's own, else score
    fusion_weight: float | None = None  # weighted fusion: the dense side's share (default 0.5)
    index_type: str | None = None  # auto, flat or hnsw; None: a saved index's own, else auto
    persona_layout: str = "second"
    greeting: str = "0"  # 0: the greeting; N: the N-th alternate greeting; random
    memory: bool = False
    memory_file: str | None = None
    user: str = "default"
    memory_top_k: int = 3
    backend: str = "transformers"  # transformers (embedded), vllm, llamacpp (a .gguf file) or openai (a remote server)
    base_url: str | None = None  # --backend openai: the server's /v1 address
    api_model: str | None = None  # --backend openai: the remote model's name (default: its first)
    tensor_parallel: int = 1  # --backend vllm: GPUs per model
    threads: int | None = None  # --backend llamacpp: CPU threads (None: the physical cores)


@dataclass
class Chat:
    """A ready conversation: the engine plus the optional persona and long-term memory."""

    engine: ChatEngine
    memory: Any = None  # qwen_kit.chat.memory.LongTermMemory
    persona: Any = None  # qwen_kit.chat.persona.Persona

    def close(self) -> None:
        """End of session: rounds still in the prompt go to long-term memory too."""
        if self.memory is not None:
            self.engine.release_window()
            self.memory.save_index()


def load_chat_model(cfg: ChatConfig) -> Any:
    """The model and tokenizer ``cfg`` names (the demo model when no default can be had).
    With ``--backend openai`` only a tokenizer is loaded (for the prompt budget), or none; with
    ``--backend llamacpp`` the GGUF file in llama.cpp and the tokenizer it carries."""
    search_options(cfg)  # a bad search or sampling flag fails before minutes of loading
    generation_settings(cfg)
    if cfg.backend == "openai":
        from qwen_kit.generation.backends import remote_model

        return remote_model(cfg)
    if cfg.backend == "llamacpp":
        from qwen_kit.generation.llamacpp import load_for_llamacpp

        return load_for_llamacpp(cfg)
    if cfg.backend == "vllm":
        from qwen_kit.generation.vllm import load_for_vllm

        return load_for_vllm(cfg)
    name = cfg.model
    if name is None:
        name = default_chat_model()
        if name == DEMO:
            print(f"{DEFAULT_CHAT_MODEL} is not on this machine and the hub cannot be reached; "
                  "using the offline demo model (SmolLM2-135M-Instruct)", file=sys.stderr)
    return load_model(name, LoadOptions(cfg.adapter, cfg.load_in_4bit, cfg.dtype, cfg.device, cfg.trust_remote_code))


def generation_settings(cfg: ChatConfig) -> GenerationSettings:
    if cfg.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {cfg.max_new_tokens}")
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  top_k=cfg.sample_top_k, repetition_penalty=cfg.repetition_penalty,
                                  greedy=cfg.greedy, seed=cfg.seed, penalize_prompt=cfg.penalize_prompt)
    settings.check()
    return settings


def context_budget(cfg: ChatConfig, loaded: Any) -> tuple[int, int]:
    """``(max_context, prompt budget)``: the budget is what is left after the answer's room."""
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", 4096) or 4096
    max_context = cfg.max_context or min(4096, limit)
    return max_context, max_context - cfg.max_new_tokens


def search_options(cfg: ChatConfig) -> dict[str, Any]:
    """The retriever settings the flags give (a saved index's own for those not given)."""
    search = {k: v for k, v in (("fusion", cfg.fusion), ("weight", cfg.fusion_weight),
                                ("index_type", cfg.index_type)) if v is not None}
    if "weight" in search and not 0.0 <= search["weight"] <= 1.0:
        raise UserError(f"--fusion-weight must be between 0 and 1, got {search['weight']}")
    return search


def open_knowledge(paths: list[str], embedder: Any, cfg: ChatConfig | None = None) -> Any:
    """One retriever over documents folders, files or saved indexes (a persona may list several),
    searching as ``cfg`` says (--fusion, --fusion-weight, --index-type)."""
    from qwen_kit.retrieval.index import open_knowledge_base

    search = search_options(cfg or ChatConfig())
    retrievers = [open_knowledge_base(p, embedder, **search) for p in paths]
    retriever = retrievers[0]
    for other in retrievers[1:]:
        retriever.add(other.chunks, other.vectors)
        retriever.file_hashes.update(other.file_hashes)
    print(f"knowledge base: {len(retriever.chunks)} chunks from {len(retriever.file_hashes)} files", file=sys.stderr)
    return retriever


def open_memory(cfg: ChatConfig, embedder: Any, tokenizer: Any, budget: int) -> Any:
    """Long-term memory of ``cfg.user`` in ``cfg.memory_file`` (default: the platform's working folder)."""
    from qwen_kit.chat.memory import DEFAULT_FILE, LongTermMemory
    from platforms import current_platform

    path = cfg.memory_file or str(current_platform().working_dir() / DEFAULT_FILE)
    memory = LongTermMemory(path, embedder, tokenizer, user=cfg.user, top_k=cfg.memory_top_k,
                            max_tokens=int(0.25 * budget))
    print(f"long-term memory: {len(memory.records)} rounds of user {cfg.user!r} in {memory.file.path}",
          file=sys.stderr)
    return memory


def assemble_chat(cfg: ChatConfig, loaded: Any, *, persona: Any = None, persona_knowledge: Any = None,
                  knowledge: Any = None, memory: Any = None, backend: Any = None) -> Chat:
    """A new conversation over an already loaded model, with already opened retrievers and
    memory (the web UI and the API server share them between their conversations; the
    terminal has one). ``backend``: where the text is generated (None: ``loaded``'s model,
    one reply at a time; see :mod:`qwen_kit.generation.backends`)."""
    from qwen_kit.chat.engine import combine_contexts
    from qwen_kit.chat.knowledge import KnowledgeContext

    settings = generation_settings(cfg)
    max_context, budget = context_budget(cfg, loaded)
    user_name = cfg.user if cfg.user != "default" else "User"
    sources: list[Any] = []
    system = cfg.system
    if persona is not None:
        from qwen_kit.chat.persona import PersonaContext

        if system is None:
            system = persona.system_message(user_name, cfg.persona_layout)
        sources.append(PersonaContext(persona, user_name))
        if persona_knowledge is not None:
            sources.append(KnowledgeContext(persona_knowledge, loaded.tokenizer, cfg.top_k, int(0.25 * budget)))
    if knowledge is not None:
        # retrieved text may use up to 40% of the prompt budget; the dialogue keeps the rest
        sources.append(KnowledgeContext(knowledge, loaded.tokenizer, cfg.top_k, int(0.4 * budget),
                                        layout=cfg.kb_layout, min_score_ratio=cfg.kb_min_ratio))
    if memory is not None:
        sources.append(memory)
    engine = ChatEngine(loaded.model, loaded.tokenizer, system=system, settings=settings,
                        max_context=max_context, eos_token_ids=loaded.eos_token_ids,
                        context_fn=combine_contexts(*sources), context_placement=cfg.context_in,
                        backend=backend if backend is not None else getattr(loaded, "backend", None),
                        on_evict=memory.remember if memory is not None else None,
                        on_round=memory.record_round if memory is not None else None)
    if persona is not None and (opening := persona.opening(user_name, cfg.greeting)) is not None:
        engine.rounds.append(opening)
    return Chat(engine, memory, persona)


def conversation_record(engine: ChatEngine) -> dict[str, Any]:
    """The conversation as saved by ``/save`` and the web UI's export."""
    return {"system": engine.system, "rounds": [asdict(r) for r in engine.rounds]}
