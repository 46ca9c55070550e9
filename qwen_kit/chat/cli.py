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

COMMANDS_HELP = "/reset  /history  /save FILE  /exit"


@dataclass
class ChatConfig:
    """Everything ``scripts/chat.py`` accepts; each field is one flag."""

    model: str | None = None
    adapter: str | None = None
    load_in_4bit: bool = False
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    system: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    sample_top_k: int = 20
    repetition_penalty: float = 1.05
    greedy: bool = False
    seed: int | None = None
    max_context: int | None = None
    jsonl: bool = False
    rag: str | None = None
    top_k: int = 4
    embedder: str | None = None
    context_in: str = "user"


def build_engine(cfg: ChatConfig) -> ChatEngine:
    """Load the model named in ``cfg`` and wrap it in a :class:`ChatEngine`."""
    name = cfg.model
    if name is None:
        name = default_chat_model()
        if name == DEMO:
            print(f"{DEFAULT_CHAT_MODEL} is not on this machine and the hub cannot be reached; "
                  "using the offline demo model (SmolLM2-135M-Instruct)", file=sys.stderr)
    loaded = load_model(name, LoadOptions(cfg.adapter, cfg.load_in_4bit, cfg.dtype, cfg.device, cfg.trust_remote_code))
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  top_k=cfg.sample_top_k, repetition_penalty=cfg.repetition_penalty,
                                  greedy=cfg.greedy, seed=cfg.seed)
    if cfg.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {cfg.max_new_tokens}")
    max_context = cfg.max_context or min(4096, getattr(loaded.model.config, "max_position_embeddings", 4096))
    context_fn = None
    if cfg.rag:
        from qwen_kit.chat.knowledge import KnowledgeContext
        from qwen_kit.retrieval.hybrid import Embedder
        from qwen_kit.retrieval.index import open_knowledge_base

        retriever = open_knowledge_base(cfg.rag, Embedder(cfg.embedder))
        # retrieved text may use up to 40% of the prompt budget; the dialogue keeps the rest
        context_fn = KnowledgeContext(retriever, loaded.tokenizer, cfg.top_k,
                                      max_tokens=int(0.4 * (max_context - cfg.max_new_tokens)))
        print(f"knowledge base: {len(retriever.chunks)} chunks from {len(retriever.file_hashes)} files", file=sys.stderr)
    return ChatEngine(loaded.model, loaded.tokenizer, system=cfg.system, settings=settings,
                      max_context=max_context, eos_token_ids=loaded.eos_token_ids, context_fn=context_fn,
                      context_placement=cfg.context_in)


class ChatSession:
    """Drives an engine from lines of text: commands, turns, output formats."""

    def __init__(self, engine: ChatEngine, out: IO[str], jsonl: bool, interactive: bool):
        self.engine, self.out, self.jsonl, self.interactive = engine, out, jsonl, interactive
        self.failed_turns = 0

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
            self.engine.reset()
            self.info("conversation cleared")
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

    def save(self, target: str) -> None:
        if not target:
            self.info("usage: /save FILE")
            return
        data = {"system": self.engine.system, "rounds": [asdict(r) for r in self.engine.rounds]}
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
    engine = build_engine(cfg)
    session = ChatSession(engine, stdout, cfg.jsonl, interactive)
    if interactive:
        return _interactive(session)
    for line in read_lines(stdin):
        if not session.handle(line):
            break
    return 2 if session.failed_turns else 0


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
