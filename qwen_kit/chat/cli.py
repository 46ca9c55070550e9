"""The terminal chat: interactive with streaming, or line-per-turn when stdin is piped."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from qwen_kit.chat.engine import ChatEngine, GenerationFailed, GenerationSettings
from qwen_kit.chat.prompt import ContextOverflow
from qwen_kit.errors import UserError
from qwen_kit.model import DEMO, LoadOptions, load_model
from qwen_kit.model.resolve import DEFAULT_CHAT_MODEL, default_chat_model

COMMANDS_HELP = "/reset  /history  /save FILE  /memories [QUERY]  /forget ID|all  /exit"


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
    fusion: str | None = None  # rrf or weighted; None: a saved index's own, else rrf
    fusion_weight: float | None = None  # weighted fusion: the dense side's share (default 0.5)
    index_type: str | None = None  # auto, flat or hnsw; None: a saved index's own, else auto
    persona_layout: str = "second"
    greeting: str = "0"  # 0: the greeting; N: the N-th alternate greeting; random
    memory: bool = False
    memory_file: str | None = None
    user: str = "default"
    memory_top_k: int = 3
    backend: str = "transformers"  # transformers (embedded), vllm, or openai (a remote server)
    base_url: str | None = None  # --backend openai: the server's /v1 address
    api_model: str | None = None  # --backend openai: the remote model's name (default: its first)
    tensor_parallel: int = 1  # --backend vllm: GPUs per model


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


def build_chat(cfg: ChatConfig) -> Chat:
    """Load the model named in ``cfg`` and set up the conversation it describes."""
    persona = None
    if cfg.persona:  # read first: a broken persona file should fail before a model loads
        from qwen_kit.chat.persona import load_persona

        persona = load_persona(cfg.persona)
    loaded = load_chat_model(cfg)
    _, budget = context_budget(cfg, loaded)
    embedder = None
    if cfg.rag or cfg.memory or (persona and persona.documents):
        from qwen_kit.retrieval.hybrid import Embedder

        embedder = Embedder(cfg.embedder)
    memory = open_memory(cfg, embedder, loaded.tokenizer, budget) if cfg.memory else None
    persona_docs = open_knowledge(persona.documents, embedder, cfg) if persona and persona.documents else None
    knowledge = open_knowledge([cfg.rag], embedder, cfg) if cfg.rag else None
    return assemble_chat(cfg, loaded, persona=persona, persona_knowledge=persona_docs, knowledge=knowledge,
                         memory=memory)


def load_chat_model(cfg: ChatConfig) -> Any:
    """The model and tokenizer ``cfg`` names (the demo model when no default can be had).
    With ``--backend openai`` only a tokenizer is loaded (for the prompt budget), or none."""
    search_options(cfg)  # a bad search or sampling flag fails before minutes of loading
    generation_settings(cfg)
    if cfg.backend == "openai":
        from qwen_kit.generation.backends import remote_model

        return remote_model(cfg)
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


class ChatSession:
    """Drives an engine from lines of text: commands, turns, output formats."""

    def __init__(self, chat: Chat | ChatEngine, out: IO[str], jsonl: bool, interactive: bool):
        self.chat = chat if isinstance(chat, Chat) else Chat(chat)
        self.engine, self.memory = self.chat.engine, self.chat.memory
        self.out, self.jsonl, self.interactive = out, jsonl, interactive
        self.failed_turns = 0

    def greet(self) -> None:
        """Show the persona's greeting, which opens the conversation."""
        rounds = self.engine.rounds
        if rounds and not rounds[0].user:
            if self.jsonl:
                self.out.write(json.dumps({"assistant": rounds[0].assistant, "greeting": True}, ensure_ascii=False) + "\n")
            else:
                self.out.write((f"{self.chat.persona.name}> " if self.interactive and self.chat.persona else "")
                               + rounds[0].assistant + "\n")
            self.out.flush()

    def handle(self, line: str) -> bool:
        """Process one input line; returns False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self.command(text)
        self.turn(text)
        return True

    def command(self, text: str) -> bool:
        name, _, arg = text.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            kept = len(self.engine.in_prompt()) if self.memory is not None else 0
            self.engine.reset()
            self.info("conversation cleared" + (f"; {kept} rounds kept in long-term memory" if kept else ""))
        elif name in ("/memories", "/forget"):
            self.memory_command(name, arg.strip())
        elif name == "/history":
            for i, r in enumerate(self.engine.rounds):
                mark = "  " if i >= self.engine.window_start else "- "  # "-": no longer in the prompt
                self.info(f"{mark}[{i + 1}] user: {r.user}\n{mark}[{i + 1}] assistant: {r.assistant}")
            if not self.engine.rounds:
                self.info("(no rounds yet)")
        elif name == "/save":
            self.save(arg.strip())
        else:
            self.info(f"unknown command {name}; commands: {COMMANDS_HELP}")
        return True

    def memory_command(self, name: str, arg: str) -> None:
        if self.memory is None:
            self.info(f"{name} needs long-term memory: start the chat with --memory")
            return
        if name == "/forget":
            try:
                n = self.memory.forget(arg)
            except UserError as err:
                self.info(str(err))
                return
            self.info(f"forgot {n} memor{'y' if n == 1 else 'ies'}")
            return
        records = self.memory.listing(arg)
        if self.jsonl:
            self.out.write(json.dumps({"memories": [asdict(r) for r in records]}, ensure_ascii=False) + "\n")
            self.out.flush()
            return
        if not records:
            self.info("(no memories" + (f" match {arg!r})" if arg else " yet)"))
        for r in records:
            self.info(f"{r.id}  {r.time[:16]}  user: {r.user_text}\n{' ' * 30}reply: {r.reply}")

    def save(self, target: str) -> None:
        if not target:
            self.info("usage: /save FILE")
            return
        data = conversation_record(self.engine)
        try:
            Path(target).expanduser().write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        except OSError as err:
            self.info(f"cannot save to {target}: {err.strerror}")
            return
        self.info(f"saved {len(self.engine.rounds)} rounds to {target}")

    def turn(self, text: str) -> None:
        try:
            turn = self.engine.start_turn(text)
        except ContextOverflow as err:
            self.failed_turns += 1
            self.emit_error(text, str(err))
            return
        stream = self.interactive or not self.jsonl
        if self.interactive:
            self.out.write("assistant> ")
        def show(piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        try:
            turn.run(show if stream else None)
        except GenerationFailed as err:
            self.failed_turns += 1
            if stream:
                self.out.write("\n")
            self.emit_error(text, str(err))
            return
        if self.jsonl:
            record: dict[str, Any] = {"user": text, "assistant": turn.text.strip(), **turn.extras}
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self.out.write("\n")
            files = list(dict.fromkeys(s["file"] for s in turn.extras.get("sources", [])))
            if files:
                self.out.write("sources: " + ", ".join(f"[{i}] {f}" for i, f in enumerate(files, start=1)) + "\n")
        self.out.flush()

    def emit_error(self, text: str, message: str) -> None:
        if self.jsonl:
            self.out.write(json.dumps({"user": text, "error": message}, ensure_ascii=False) + "\n")
            self.out.flush()
        print(f"qwen_kit: {message}", file=sys.stderr)

    def info(self, message: str) -> None:
        # Informational lines never mix into machine-readable stdout.
        print(message, file=sys.stderr if (self.jsonl or not self.interactive) else self.out)


def read_lines(stream: IO[bytes], name: str = "stdin"):
    """Yield decoded lines; a line that is not UTF-8 is a :class:`UserError` naming it."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{name} line {number} is not valid UTF-8 (byte {err.start}); "
                            "save the input as UTF-8 and run again") from None


def run_chat(cfg: ChatConfig, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> int:
    """Run the chat until /exit or end of input. Returns the process exit code."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False
    chat = build_chat(cfg)
    session = ChatSession(chat, stdout, cfg.jsonl, interactive)
    try:
        session.greet()
        if interactive:
            return _interactive(session)
        for line in read_lines(stdin):
            if not session.handle(line):
                break
        return 2 if session.failed_turns else 0
    finally:
        chat.close()


def _interactive(session: ChatSession) -> int:
    import readline  # noqa: F401  - line editing and history for input()

    print(f"chat ready. commands: {COMMANDS_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except UnicodeDecodeError:
            print("that line is not valid UTF-8; type it again", file=sys.stderr)
            continue
        if not session.handle(line):
            return 0
