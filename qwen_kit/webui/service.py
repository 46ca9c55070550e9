"""What the web page does, without the page: one loaded model shared by many conversations.

The Gradio page (:mod:`qwen_kit.webui.app`) only turns clicks into calls on
:class:`WebChatService` and :class:`Conversation`. Every conversation is a
:class:`~qwen_kit.chat.cli.Chat` built by the same :func:`~qwen_kit.chat.cli.assemble_chat`
as the terminal chat, so the web UI adds no second chat engine.

Files: the page names knowledge bases and personas by label, never by path. The labels are
fixed at start from the folders given on the command line (``--kb``, ``--personas``); a
label that is not one of them is refused, and a persona whose documents lie outside those
folders is not offered.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from qwen_kit.chat.cli import (Chat, ChatConfig, assemble_chat, context_budget, conversation_record,
                               generation_settings, load_chat_model, open_knowledge, open_memory)
from qwen_kit.chat.engine import GenerationFailed, GenerationSettings
from qwen_kit.chat.prompt import ContextOverflow
from qwen_kit.door import is_loopback  # noqa: F401 - the address rules below and the API's
from qwen_kit.errors import UserError

NONE = "(none)"
EMPTY_REPLY = "*(the model ended its reply without any text)*"
PERSONA_SUFFIXES = (".yaml", ".yml", ".json")
MEMORY_CACHE = 64  # memory objects kept open for users no conversation holds (least recently used go)
WEB_USER = "web:"  # a page login's memories: "web:NAME" (the API's callers have their own namespaces)


@dataclass
class WebConfig:
    """Everything ``scripts/webui.py`` accepts besides the chat's own flags."""

    chat: ChatConfig = field(default_factory=ChatConfig)
    knowledge: list[str] = field(default_factory=list)  # documents folders or saved indexes
    personas: list[str] = field(default_factory=list)  # persona files or folders of them
    memory: bool = False  # the memory switch's starting position
    host: str | None = None  # None: the platform's default (AutoDL: 0.0.0.0)
    port: int | None = None
    share: bool = False
    auth: str | None = None  # "user:password" on the command line (warned: argv is visible to others)
    auth_file: str | None = None  # lines of "user:password"
    no_auth: bool = False
    max_batch: int = 8  # conversations generated together (the continuous batcher's slots)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides loopback and --host


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    share: bool
    auth: list[tuple[str, str]] | None


AUTH_ENV = "QWEN_KIT_WEBUI_AUTH"  # "user:password", several separated by commas


def _login(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise UserError(f"{where} must look like USER:PASSWORD (both parts non-empty)")
    return user, password


def read_logins(cfg: WebConfig) -> list[tuple[str, str]] | None:
    """Logins from --auth-file, then the QWEN_KIT_WEBUI_AUTH variable, then --auth (which works,
    with a warning: a password in argv shows in `ps`, shell history and notebook cells)."""
    import os

    from qwen_kit.privacy import warn_if_shared

    given = [x for x in (cfg.auth, cfg.auth_file, os.environ.get(AUTH_ENV)) if x]
    if given and cfg.no_auth:
        raise UserError("give a login (--auth-file, QWEN_KIT_WEBUI_AUTH or --auth) or --no-auth, not both")
    if cfg.auth_file:
        path = Path(cfg.auth_file).expanduser()
        if not path.is_file():
            raise UserError(f"--auth-file {path}: no such file; write one line USER:PASSWORD per login into it")
        warn_if_shared(path)
        logins = [_login(line, f"{path} line {n}") for n, line in
                  enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()
                  and not line.lstrip().startswith("#")]
        if not logins:
            raise UserError(f"--auth-file {path} holds no login; write one line USER:PASSWORD per login")
        return logins
    if os.environ.get(AUTH_ENV):
        return [_login(part, f"{AUTH_ENV} entry {n}")
                for n, part in enumerate(os.environ[AUTH_ENV].split(","), start=1) if part.strip()]
    if cfg.auth is not None:
        login = _login(cfg.auth, "--auth")
        print("qwen_kit: warning: --auth puts the password in the process list and shell history; "
              f"prefer --auth-file FILE (one USER:PASSWORD per line, chmod 600) or {AUTH_ENV}", file=sys.stderr)
        return [login]
    return None


def server_address(cfg: WebConfig, platform: Any = None) -> ServerAddress:
    """Where to listen and with which login; refuses an open page reachable by others."""
    if platform is None:
        from platforms import current_platform

        platform = current_platform()
    default_host, default_port = platform.webui_address()
    host, port = cfg.host or default_host, cfg.port or default_port
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    auth = read_logins(cfg)
    exposed = cfg.share or not is_loopback(host)
    if exposed and auth is None and not cfg.no_auth:
        where = "a public --share link" if cfg.share else f"--host {host}"
        raise UserError(f"{where} lets other people reach the page; add --auth-file FILE (lines of USER:PASSWORD) "
                        f"or set {AUTH_ENV}=USER:PASSWORD (or --no-auth if you really want it open)")
    return ServerAddress(host, port, cfg.share, auth)


def check_port_free(address: ServerAddress) -> None:
    """Fail in a second, before the model loads, when something already listens there."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address.host, address.port))
        except OSError as err:
            raise UserError(f"cannot listen on {address.host}:{address.port} ({err.strerror}); "
                            "choose another --port or stop what uses it") from None


def _inside(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path == root or root in path.parents for root in roots)


class WebChatService:
    """The model, the knowledge bases, the personas and the memory file, loaded once at start
    and shared by every open conversation (and by the API server's requests). Replies are
    generated by one backend for all of them: the continuous batcher over the embedded model
    (up to ``max_batch`` conversations at once), or the remote/vLLM backend ``--backend`` names."""

    def __init__(self, cfg: WebConfig, loaded: Any = None):
        from qwen_kit.chat.persona import load_persona

        self.cfg = cfg
        self.roots = [Path(p).expanduser().resolve() for p in [*cfg.knowledge, *cfg.personas]]
        for given, root in zip([*cfg.knowledge, *cfg.personas], self.roots):
            if not root.exists():
                raise UserError(f"{given}: no such file or folder; check --kb / --personas")
        self.personas: dict[str, Any] = {}
        for path, named in self._persona_files():
            try:
                persona = load_persona(path)
            except UserError as err:
                if named:  # a file named on the command line must load; one in a folder may be skipped
                    raise
                print(f"qwen_kit: skipping persona {path}: {err}", file=sys.stderr)
                continue
            outside = [d for d in persona.documents if not _inside(Path(d), self.roots)]
            if outside:  # the page must not read files outside the folders given at start
                print(f"qwen_kit: skipping persona {path}: its documents {outside[0]} are outside "
                      "the folders given with --kb / --personas", file=sys.stderr)
                continue
            label = f"{persona.name} ({path.name})"
            self.personas[label] = persona
        self.loaded = loaded or load_chat_model(cfg.chat)
        self.max_context, self.budget = context_budget(cfg.chat, self.loaded)
        from qwen_kit.retrieval.hybrid import Embedder

        self.embedder = Embedder(cfg.chat.embedder)
        self.knowledge: dict[str, Any] = {}
        for p in cfg.knowledge:
            self.knowledge[self._kb_label(p)] = open_knowledge([p], self.embedder, cfg.chat)
        self.persona_docs = {label: open_knowledge(p.documents, self.embedder, cfg.chat)
                             for label, p in self.personas.items() if p.documents}
        if cfg.max_batch < 1:
            raise UserError(f"--max-batch must be at least 1, got {cfg.max_batch}")
        self.backend = getattr(self.loaded, "backend", None)
        if self.backend is None:
            from qwen_kit.generation.backends import BatchedBackend

            self.backend = BatchedBackend.for_model(self.loaded, max_batch=cfg.max_batch, max_context=self.max_context)
        self.state_lock = threading.RLock()  # prompt building and memory edits
        # open memories: the recently used ones kept (bounded), and any still held by a
        # conversation or a request found again (one object per user, never two diverging)
        self._recent: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._held: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self.memory = self.memory_for(None)  # the local user's (--user): no login, or the terminal's
        assemble_chat(cfg.chat, self.loaded)  # a bad token budget fails at start, not in the page
        self._open: weakref.WeakSet[Conversation] = weakref.WeakSet()
        self._chunks: dict[int, dict[str, Any]] = {}

    # -- what the page may offer -------------------------------------------------------------
    def _persona_files(self) -> list[tuple[Path, bool]]:
        """``(file, named on the command line)`` for every persona file given or in a given folder."""
        files: list[tuple[Path, bool]] = []
        for given in self.cfg.personas:
            p = Path(given).expanduser().resolve()
            if p.is_dir():
                files += [(f, False) for f in sorted(p.iterdir())
                          if f.suffix.lower() in PERSONA_SUFFIXES and f.is_file()]
            else:
                files.append((p, True))
        return files

    def _kb_label(self, path: str) -> str:
        p = Path(path).expanduser().resolve()
        label, n = p.name or str(p), 2
        while label in self.knowledge:
            label, n = f"{p.name} ({n})", n + 1
        return label

    def persona_choices(self) -> list[str]:
        return [NONE, *self.personas]

    def knowledge_choices(self) -> list[str]:
        return [NONE, *self.knowledge]

    def _pick(self, label: str | None, offered: dict[str, Any], what: str) -> str | None:
        if not label or label == NONE:
            return None
        if label not in offered:
            raise UserError(f"{what} {label!r} is not one of those given at start ({', '.join(offered) or 'none'})")
        return label

    @property
    def model_name(self) -> str:
        ref = self.loaded.ref
        text = f"{ref.name}" + (f" + adapter {self.loaded.adapter.name}" if self.loaded.adapter else "")
        p = self.loaded.precision
        if p is None:  # a remote or vLLM backend
            return f"{text} · {getattr(self.backend, 'name', 'remote')}"
        return f"{text} · {p.device} · {'4-bit' if p.load_in_4bit else p.dtype}"

    # -- conversations ----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether every slot is generating now (a new message will wait for one)."""
        batcher = getattr(self.backend, "batcher", None)
        return batcher is not None and batcher.active + batcher.waiting >= batcher.max_batch

    def close_backend(self) -> None:
        batcher = getattr(self.backend, "batcher", None)
        if batcher is not None:
            batcher.close()

    def memory_for(self, login: str | None) -> Any:
        """The page's memories: each login has its own (memory user ``web:LOGIN`` in the one
        memory file); without a login (--no-auth, or localhost) there is one local user, --user."""
        return self.memory_of(f"{WEB_USER}{login}" if login else self.cfg.chat.user)

    def memory_of(self, user: str) -> Any:
        """The memories of memory user ``user`` (already namespaced by the caller's door), opened
        once and shared while in use; at most MEMORY_CACHE unused ones stay open."""
        with self.state_lock:
            memory = self._recent.get(user) or self._held.get(user)
            if memory is None:
                memory = open_memory(replace(self.cfg.chat, user=user), self.embedder, self.loaded.tokenizer,
                                     self.budget)
                self._held[user] = memory
            self._recent[user] = memory
            self._recent.move_to_end(user)
            while len(self._recent) > MEMORY_CACHE:
                _, old = self._recent.popitem(last=False)
                if old.unsaved:  # its index cache, before the object may go
                    old.save_index()
            return memory

    def open_memories(self) -> int:
        """How many memory objects are open (cached or held)."""
        with self.state_lock:
            return len(set(map(id, [*self._recent.values(), *self._held.values()])))

    def save_memories(self) -> None:
        """Write every open memory's index cache that has rounds not yet saved."""
        with self.state_lock:
            for memory in {id(m): m for m in [*self._recent.values(), *self._held.values()]}.values():
                if memory.unsaved:
                    memory.save_index()

    def conversation(self, persona: str | None = None, knowledge: str | None = None,
                     memory: bool | None = None, login: str | None = None) -> "Conversation":
        conv = Conversation(self, self._pick(persona, self.personas, "persona"),
                            self._pick(knowledge, self.knowledge, "knowledge base"),
                            self.cfg.memory if memory is None else memory, login)
        self._open.add(conv)
        return conv

    def close_all(self) -> None:
        """Server shutdown: every open conversation's rounds go to long-term memory."""
        for conv in list(self._open):
            conv.close()
        self.save_memories()

    def chunk_text(self, conv: "Conversation", chunk_id: str) -> str:
        for retriever in (self.knowledge.get(conv.knowledge or ""), self.persona_docs.get(conv.persona or "")):
            if retriever is None:
                continue
            table = self._chunks.get(id(retriever))
            if table is None:
                table = self._chunks[id(retriever)] = {c.id: c.text for c in retriever.chunks}
            if chunk_id in table:
                return table[chunk_id]
        return ""

    # -- memory panel -----------------------------------------------------------------------
    def memories(self, query: str = "", limit: int = 50, login: str | None = None) -> list[list[str]]:
        """The memory panel: ``login``'s own memories only."""
        with self.state_lock:
            return [[r.id, r.time[:16], r.user_text, r.reply] for r in self.memory_for(login).listing(query, limit)]

    def forget(self, target: str, login: str | None = None) -> int:
        """Forget one of ``login``'s memories, or ``all`` of them; nobody else's."""
        with self.state_lock:
            return self.memory_for(login).forget(target)


class Conversation:
    """One browser tab's conversation: persona, knowledge base and memory switch, and the
    chat built from them. Changing the knowledge base or the memory switch keeps the
    dialogue; choosing another persona starts a new one with its greeting."""

    def __init__(self, service: WebChatService, persona: str | None, knowledge: str | None, memory: bool,
                 login: str | None = None):
        self.service, self.login = service, login
        self.persona, self.knowledge, self.memory_on = persona, knowledge, memory
        self.chat: Chat = self._build()

    def _build(self) -> Chat:
        s = self.service
        persona = s.personas.get(self.persona) if self.persona else None
        return assemble_chat(s.cfg.chat, s.loaded, persona=persona,
                             persona_knowledge=s.persona_docs.get(self.persona) if self.persona else None,
                             knowledge=s.knowledge.get(self.knowledge) if self.knowledge else None,
                             memory=s.memory_for(self.login) if self.memory_on else None, backend=s.backend)

    @property
    def engine(self) -> Any:
        return self.chat.engine

    def configure(self, persona: str | None = None, knowledge: str | None = None, memory: bool = False) -> None:
        s = self.service
        persona = s._pick(persona, s.personas, "persona")
        knowledge = s._pick(knowledge, s.knowledge, "knowledge base")
        with s.state_lock:
            if persona != self.persona:
                self._restart(persona, knowledge, memory)
                return
            if (knowledge, memory) == (self.knowledge, self.memory_on):
                return
            old = self.chat.engine
            self.knowledge, self.memory_on = knowledge, memory
            self.chat = self._build()
            self.chat.engine.rounds, self.chat.engine.window_start = old.rounds, old.window_start
            self.chat.engine.settings = old.settings

    def _restart(self, persona: str | None, knowledge: str | None, memory: bool) -> None:
        """End this dialogue (its rounds go to memory when memory was on) and begin a new one,
        opened by the persona's greeting, with the same sampling settings."""
        settings = self.engine.settings
        self.chat.close()
        self.persona, self.knowledge, self.memory_on = persona, knowledge, memory
        self.chat = self._build()
        self.chat.engine.settings = settings

    def set_sampling(self, settings: GenerationSettings) -> None:
        if settings.max_new_tokens < 1:
            raise UserError("max new tokens must be at least 1")
        if settings.max_new_tokens >= self.service.max_context:
            raise UserError(f"max new tokens must be below the context of {self.service.max_context} tokens")
        self.chat.engine.settings = settings

    # -- turns ------------------------------------------------------------------------------
    def stream(self, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(reply so far, extras)`` while the reply is generated; the round is
        recorded when generation ends. Other conversations generate at the same time (the
        backend batches them); when every slot is taken, this one waits for a free slot."""
        text = text.strip()
        if not text:
            return
        s = self.service
        with s.state_lock:
            try:
                turn = self.chat.engine.start_turn(text)
            except ContextOverflow as err:
                raise UserError(str(err)) from None
        yield "", turn.extras
        reply = ""
        try:
            with contextlib.closing(iter(turn)) as pieces:  # closed early: generation stops
                for piece in pieces:
                    reply += piece
                    yield reply, turn.extras
        except GenerationFailed as err:
            raise UserError(str(err)) from None

    def reset(self) -> int:
        """Clear the dialogue (its rounds go to memory when memory is on); the persona's
        greeting opens the new one. Returns how many rounds went to memory."""
        with self.service.state_lock:
            kept = len(self.engine.in_prompt()) if self.memory_on else 0
            self._restart(self.persona, self.knowledge, self.memory_on)
            return kept

    def close(self) -> None:
        with self.service.state_lock:
            self.chat.close()

    # -- display and export -----------------------------------------------------------------
    def messages(self, pending: tuple[str, str, dict[str, Any]] | None = None,
                 waiting: str = "…") -> list[dict[str, Any]]:
        """The dialogue as chat messages; each answer is followed by its sources (collapsed,
        the chunk text inside) and the memories it recalled. ``pending``: a turn being
        generated, as ``(user text, reply so far, extras)``; ``waiting`` stands in for its
        reply until the first text arrives."""
        out: list[dict[str, Any]] = []
        rounds = [(r.user, r.assistant, r.extras, False) for r in self.engine.rounds]
        if pending is not None:
            rounds.append((*pending, True))
        for user, reply, extras, live in rounds:
            if user:
                out.append({"role": "user", "content": user})
            out.append({"role": "assistant", "content": reply or (waiting if live else EMPTY_REPLY)})
            if live and not reply:
                continue
            for i, src in enumerate(extras.get("sources", []), start=1):
                out.append({"role": "assistant", "content": self.service.chunk_text(self, src["chunk_id"]),
                             "metadata": {"title": f"Source [{i}] · {src['chunk_id']} · score {src['score']:.3f}",
                                          "status": "done"}})
            if extras.get("memories"):
                listed = "\n".join(f"- `{m['id']}` {m['time'][:16]}: {m['user_text']}" for m in extras["memories"])
                out.append({"role": "assistant", "content": listed,
                            "metadata": {"title": f"Memories recalled ({len(extras['memories'])})",
                                         "status": "done"}})
        return out

    def export(self, folder: Path) -> Path:
        """Write the conversation as JSON (the terminal's ``/save`` format) and return the file."""
        folder.mkdir(parents=True, exist_ok=True)
        data = conversation_record(self.engine)
        data.update(model=self.service.model_name, persona=self.persona, knowledge_base=self.knowledge)
        path = folder / time.strftime("conversation-%Y%m%d-%H%M%S.json")
        path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        return path


def sampling_from(cfg: ChatConfig, **changes: Any) -> GenerationSettings:
    """The page's sampling controls as settings (the command line gives their start values)."""
    return replace(generation_settings(cfg), **changes)
