"""The OpenAI-compatible API server: ``/v1/chat/completions`` (streamed with SSE, or whole),
``/v1/models`` and ``/health``, over the kit's chat pipeline.

Every request goes through the same pipeline as the terminal and the web page
(:func:`~qwen_kit.chat.pipeline.assemble_chat`: prompt, knowledge base, persona, memory) and the
same backend as the web page (the continuous batcher by default), so requests that arrive
together are generated together.

Choosing the pipeline: the ``model`` field names it (``/v1/models`` lists them): the plain
model, ``kb:NAME`` (a knowledge base given with ``--kb``), ``persona:NAME`` (a persona file
given with ``--personas``), joined with ``+`` (``persona:wen+kb:campus+memory``); or the
request's ``qwen_kit`` object: ``{"knowledge": NAME, "persona": NAME, "memory": true}``.
``user`` (OpenAI's field) says whose memories are used, inside the caller's namespace (a named
key's holder: ``key:NAME``; anyone else: ``anon:USER``; see :meth:`ApiService.memory_user`).
Sources and recalled memories come back in a ``qwen_kit`` field, which ordinary clients ignore.

The event loop only moves bytes: requests are prepared in worker threads, non-streamed replies
are generated in a pool of their own (``--max-batch`` threads, so every batch slot can be busy),
streamed ones each in a thread, and memory is written by one writer thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from qwen_kit.chat.pipeline import assemble_chat
from qwen_kit.chat.prompt import ContextOverflow, Round
from qwen_kit.door import DoorMiddleware, DoorPolicy, check_port_free, is_loopback
from qwen_kit.errors import UserError
from qwen_kit.privacy import warn_if_shared
from qwen_kit.service import ConversationService, ServiceConfig

API_KEYS_ENV = "QWEN_KIT_API_KEYS"  # KEY or NAME:KEY, several separated by commas
DEFAULT_PORT = 8000  # vLLM's and most OpenAI-compatible servers'; AutoDL: 6006 (its forwarded port)


@dataclass
class ServeConfig(ServiceConfig):
    """Everything ``scripts/serve.py`` accepts besides the chat's own flags."""

    host: str | None = None  # None: 127.0.0.1 (AutoDL: 0.0.0.0:6006)
    port: int | None = None
    no_auth: bool = False
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides loopback and --host
    max_waiting: int = 32  # requests waiting for a slot before new ones get 503 (each holds a thread)
    api_key_file: str | None = None
    served_name: str | None = None  # the plain model's name in /v1/models (default: the model's)
    allowed_origins: list[str] = field(default_factory=list)  # browser origins allowed to call (CORS)
    keys: list[tuple[str | None, str]] = field(default_factory=list)  # filled by read_api_keys


class ApiError(Exception):
    """An error the client gets in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# -- keys and address ---------------------------------------------------------------------------
def _key_entry(text: str) -> tuple[str | None, str]:
    name, sep, key = text.strip().rpartition(":")
    return (name or None, key) if sep else (None, text.strip())


def read_api_keys(cfg: ServeConfig) -> list[tuple[str | None, str]]:
    """``(name, key)`` pairs from ``--api-key-file`` (one ``KEY`` or ``NAME:KEY`` per line) or the
    ``QWEN_KIT_API_KEYS`` variable (comma-separated). Never from argv: it shows in ``ps``."""
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        if not path.is_file():
            raise UserError(f"--api-key-file {path}: no such file; write one KEY (or NAME:KEY) per line into it")
        warn_if_shared(path)
        keys = [_key_entry(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        if not keys:  # an empty file must not quietly mean "no key needed"
            raise UserError(f"--api-key-file {path} holds no key; write one KEY (or NAME:KEY) per line into it")
        where = str(path)
    else:
        keys = [_key_entry(part) for part in os.environ.get(API_KEYS_ENV, "").split(",") if part.strip()]
        where = API_KEYS_ENV
    for n, (_, key) in enumerate(keys, start=1):
        if len(key) < 8:
            raise UserError(f"{where} entry {n}: a key of {len(key)} characters is too easy to guess; use at least 8 "
                            "(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    return keys


def serve_address(cfg: ServeConfig, keys: list[tuple[str | None, str]], platform: Any = None) -> tuple[str, int]:
    """Where to listen; refuses an API that others can reach without a key (the web page's rule)."""
    if platform is None:
        from platforms import current_platform

        platform = current_platform()
    default_host, web_port = platform.webui_address()
    host = cfg.host or default_host
    port = cfg.port or (web_port if not is_loopback(default_host) else DEFAULT_PORT)
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    if cfg.no_auth and keys:
        raise UserError(f"give API keys (--api-key-file or {API_KEYS_ENV}) or --no-auth, not both")
    if not is_loopback(host) and not keys and not cfg.no_auth:
        raise UserError(f"--host {host} lets other machines reach the API; give keys with --api-key-file FILE "
                        f"(one KEY or NAME:KEY per line) or {API_KEYS_ENV}=KEY (or --no-auth if you really want it open)")
    return host, port


# -- requests -----------------------------------------------------------------------------------
@dataclass
class Pipeline:
    persona: str | None = None  # a persona label of the service
    knowledge: str | None = None  # a knowledge-base label of the service
    memory: bool = False


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise ApiError(400, f"{where}.content must be a string or a list of text parts", param="messages")


def parse_messages(messages: Any) -> tuple[str | None, list[Any], str]:
    """``(system text or None, earlier rounds, the new user message)`` from OpenAI messages."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    system: list[str] = []
    rounds: list[Round] = []
    user: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", param="messages")
        role, text = m["role"], _text(m.get("content"), f"messages[{i}]")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            user.append(text)
        elif role == "assistant":
            rounds.append(Round("\n".join(user), text))
            user = []
        else:
            raise ApiError(400, f"messages[{i}]: role {role!r} is not supported (system, user, assistant)",
                           param="messages")
    if not user:
        raise ApiError(400, "the last message must come from the user", param="messages")
    return ("\n\n".join(system) if system else None), rounds, "\n".join(user)


def check_supported(body: dict[str, Any]) -> None:
    """Refuse, naming the field, what would change the answer's meaning if it were ignored;
    accept the same fields when they ask for nothing (``n: null``, ``tools: []``, ``logprobs: false``)."""
    if body.get("n") not in (None, 1):
        raise ApiError(400, "'n' other than 1 is not supported: ask again for another reply", param="n")
    for name in ("tools", "functions"):
        if body.get(name):
            raise ApiError(400, f"'{name}': tool and function calls are not supported by this server", param=name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise ApiError(400, f"'{name}': tool and function calls are not supported by this server", param=name)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise ApiError(400, f"'response_format' {kind!r} is not supported (only text): the reply would not be "
                       "held to a schema", param="response_format")
    if body.get("logprobs"):
        raise ApiError(400, "'logprobs' is not supported by this server", param="logprobs")
    if body.get("top_logprobs"):
        raise ApiError(400, "'top_logprobs' is not supported by this server", param="top_logprobs")
    for name in ("audio", "modalities", "prediction"):
        if body.get(name) and body.get(name) != ["text"]:
            raise ApiError(400, f"'{name}' is not supported by this server (text only)", param=name)


def stream_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``, checked as OpenAI checks it."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not body.get("stream"):
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object such as {\"include_usage\": true}",
                       param="stream_options")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise ApiError(400, "'stream_options.include_usage' must be true or false", param="stream_options")
    return usage


class MemoryWriter:
    """Writes answered rounds into their users' memories, one at a time, on a thread of its own
    (never the event loop). The memory file is appended to at once (the file is the truth); the
    index cache beside it, which a restart brings up to date from the file anyway, is not
    rewritten and re-hashed for every reply: a user's index is saved when it is new, after
    SAVE_EVERY rounds, or once the writer has had nothing to do for SAVE_AFTER_S seconds, and
    at shutdown."""

    SAVE_EVERY = 32
    SAVE_AFTER_S = 10.0

    def __init__(self, web: ConversationService):
        self.web = web
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qwen_kit-memory")
        self._count = threading.Lock()
        self.waiting = 0
        self.dirty: dict[str, Any] = {}  # memory user -> memory with rounds not in its saved index
        self.saved_at: dict[str, float] = {}
        self.timer: threading.Timer | None = None

    def submit(self, job: Any) -> concurrent.futures.Future:
        """Run ``job()`` on the writer's thread, after the writes queued before it."""
        with self._count:
            self.waiting += 1

        def run() -> None:
            try:
                job()
            finally:
                self._done()

        return self.pool.submit(run)

    def write(self, memory: Any, round_: Any) -> None:
        """On the writer's thread: append the round to the file and to the in-memory index."""
        with self.web.state_lock:  # prepare() searches the same memories
            memory.remember([round_])
        self.dirty[memory.user] = memory

    def _done(self) -> None:
        with self._count:
            self.waiting -= 1
            idle = self.waiting == 0
        now = time.monotonic()
        for user, memory in list(self.dirty.items()):
            new = not (memory.index_dir / "manifest.json").is_file()
            quiet = idle and now - self.saved_at.get(user, 0.0) >= self.SAVE_AFTER_S
            if new or quiet or memory.unsaved >= self.SAVE_EVERY:
                self._save(user, memory)
        if self.dirty and idle and self.timer is None:  # save the rest once things are quiet
            self.timer = threading.Timer(self.SAVE_AFTER_S, self._later)
            self.timer.daemon = True
            self.timer.start()

    def _later(self) -> None:
        self.timer = None
        with contextlib.suppress(RuntimeError):  # the writer has shut down (close() saved everything)
            self.pool.submit(self.flush)

    def _save(self, user: str, memory: Any) -> None:
        with self.web.state_lock:
            memory.save_index()
        self.dirty.pop(user, None)
        self.saved_at[user] = time.monotonic()

    def flush(self) -> None:
        for user, memory in list(self.dirty.items()):
            self._save(user, memory)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with contextlib.suppress(RuntimeError):
            self.pool.submit(self.flush)
        self.pool.shutdown(wait=True)


def _number(body: dict[str, Any], name: str, kind: type, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ApiError(400, f"'{name}' must be a number", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return kind(value)


class ApiService:
    """The pipeline's shared parts (model, backend, knowledge bases, personas, memories: the
    conversation service, :class:`ConversationService`) and the API's naming of them."""

    def __init__(self, cfg: ServeConfig, web: ConversationService, backend: Any):
        self.cfg, self.web, self.backend = cfg, web, backend
        ref = web.loaded.ref
        # a folder is served by its own name (outputs/sft/final -> final), a hub id as it is
        self.base_name = cfg.served_name or (Path(ref.name).name if getattr(ref, "source", "") == "folder" else ref.name)
        self.kb_names = {f"kb:{label}": label for label in web.knowledge}
        self.persona_names: dict[str, str] = {}
        for label, persona in web.personas.items():
            stem = label.rsplit("(", 1)[-1].rstrip(")").rsplit(".", 1)[0]  # "Wen (wen.yaml)" -> wen
            self.persona_names[f"persona:{stem}"] = label
        self.keys = cfg.keys
        self.cancelled = 0
        self.started = time.time()
        self.writer = MemoryWriter(web)
        # non-streamed replies wait for their tokens in threads of their own: asyncio's default
        # pool (cpu + 4 threads) would cap them below --max-batch and starve prepare()
        self.generating = concurrent.futures.ThreadPoolExecutor(max(cfg.max_batch, 1),
                                                                thread_name_prefix="qwen_kit-reply")

    def close(self) -> None:
        self.generating.shutdown(wait=False, cancel_futures=True)
        self.writer.close()
        self.web.save_memories()

    def check_capacity(self) -> None:
        """Refuse a new request (503, Retry-After) while ``--max-waiting`` requests already wait for
        a slot: each waiting request holds a thread and a connection, so the line must end somewhere."""
        batcher = getattr(self.backend, "batcher", None)
        if batcher is not None and batcher.waiting >= self.cfg.max_waiting:
            raise ApiError(503, f"the server is busy: {batcher.waiting} requests are waiting for a free slot; "
                           "try again shortly", kind="server_error", code="server_busy")

    def model_ids(self) -> list[str]:
        return [self.base_name, *self.kb_names, *self.persona_names]

    def pipeline(self, model: Any, extra: Any) -> Pipeline:
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' must name one of /v1/models", param="model")
        p = Pipeline(memory=self.cfg.memory)
        for part in model.split("+"):
            if part in (self.base_name, "default"):
                continue
            if part == "memory":
                p.memory = True
            elif part in self.kb_names:
                p.knowledge = self.kb_names[part]
            elif part in self.persona_names:
                p.persona = self.persona_names[part]
            else:
                raise ApiError(404, f"model {model!r}: {part!r} is not served here; GET /v1/models lists "
                               f"{', '.join(self.model_ids())} (join them with +, and +memory)",
                               param="model", code="model_not_found")
        if extra is not None:
            if not isinstance(extra, dict):
                raise ApiError(400, "'qwen_kit' must be an object", param="qwen_kit")
            if extra.get("knowledge") is not None:
                name = extra["knowledge"]
                p.knowledge = self.kb_names.get(f"kb:{name}") or self._fail(f"knowledge base {name!r}", self.kb_names)
            if extra.get("persona") is not None:
                name = extra["persona"]
                p.persona = (self.persona_names.get(f"persona:{name}")
                             or self._fail(f"persona {name!r}", self.persona_names))
            if extra.get("memory") is not None:
                p.memory = bool(extra["memory"])
        return p

    @staticmethod
    def _fail(what: str, offered: dict[str, str]) -> str:
        names = ", ".join(k.split(":", 1)[1] for k in offered) or "none"
        raise ApiError(404, f"{what} is not served here (served: {names})", param="qwen_kit", code="model_not_found")

    def memory_user(self, login: str | None, user: Any) -> str:
        """Whose memories a request uses. Each door has its own namespace, so a name given in
        ``user`` never reaches memories another door authenticated: a named key's holder gets
        ``key:NAME`` (``key:NAME/USER`` with ``user``), whatever ``user`` says; a caller without
        a named key (an unnamed key, ``--no-auth``, a key-less loopback server) gets
        ``anon:USER`` (``anon:`` without ``user``): never the local user's memories (``--user``,
        the terminal's and the page's without a login). The web page's logins are ``web:LOGIN``."""
        if user is not None and not isinstance(user, str):
            raise ApiError(400, "'user' must be a string", param="user")
        user = (user or "").strip()
        if login:
            return f"key:{login}/{user}" if user else f"key:{login}"
        return f"anon:{user}"

    def prepare(self, body: dict[str, Any], login: str | None) -> tuple[Any, Any, Pipeline]:
        """Parse and check a request; build its conversation; return ``(turn, chat, pipeline)``."""
        web = self.web
        pipeline = self.pipeline(body.get("model"), body.get("qwen_kit"))
        system, rounds, message = parse_messages(body.get("messages"))
        check_supported(body)
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
            raise ApiError(400, "'stop' must be a string or a list of at most 16 strings", param="stop")
        max_context = web.max_context
        max_tokens = _number(body, "max_completion_tokens", int, 1, 10**9) or _number(body, "max_tokens", int, 1, 10**9)
        if max_tokens is None:
            max_tokens = min(self.cfg.chat.max_new_tokens, max_context // 2)
        if max_tokens >= max_context:
            raise ApiError(400, f"max_tokens {max_tokens} leaves no room for the prompt in this server's context of "
                           f"{max_context} tokens", param="max_tokens", code="context_length_exceeded")
        temperature = _number(body, "temperature", float, 0, 2)
        top_p = _number(body, "top_p", float, 0, 1)
        top_k = _number(body, "top_k", int, -1, 10**6)
        penalty = _number(body, "repetition_penalty", float, 0.01, 10)
        seed = _number(body, "seed", int, -(2**63), 2**63 - 1)
        chat_cfg = self.cfg.chat
        cfg = replace(chat_cfg, max_new_tokens=max_tokens, max_context=max_context,
                      greedy=chat_cfg.greedy if temperature is None else temperature == 0,
                      temperature=chat_cfg.temperature if not temperature else temperature,
                      top_p=chat_cfg.top_p if top_p is None else top_p,
                      sample_top_k=chat_cfg.sample_top_k if top_k is None else max(top_k, 0),
                      repetition_penalty=chat_cfg.repetition_penalty if penalty is None else penalty,
                      seed=seed if seed is not None else chat_cfg.seed)
        persona = web.personas.get(pipeline.persona) if pipeline.persona else None
        if system is not None and persona is not None:
            user_name = cfg.user if cfg.user != "default" else "User"
            system = persona.system_message(user_name, cfg.persona_layout) + "\n\n" + system
        if system is not None:
            cfg = replace(cfg, system=system)
        memory_user = self.memory_user(login, body.get("user")) if pipeline.memory else None
        with web.state_lock:
            memory = web.memory_of(memory_user) if memory_user else None
            try:
                chat = assemble_chat(cfg, web.loaded, persona=persona,
                                     persona_knowledge=web.persona_docs.get(pipeline.persona) if persona else None,
                                     knowledge=web.knowledge.get(pipeline.knowledge) if pipeline.knowledge else None,
                                     memory=memory, backend=self.backend)
                engine = chat.engine
                engine.rounds = list(rounds)  # the client's history replaces any greeting
                engine.on_evict = None  # the client's old rounds are not new memories
                engine.on_round = None  # the new round is written by the memory writer, after success
                engine.drop_repeated_replies = False  # what the client sends is what the model sees
                engine.settings.ignore_eos = bool(body.get("ignore_eos"))
                turn = engine.start_turn(message)
                if engine.window_start:  # the only rounds left out: the oldest, which did not fit
                    turn.extras["dropped_rounds"] = engine.window_start
                    turn.extras["dropped_because"] = "context_length"
            except ContextOverflow as err:
                raise ApiError(400, f"{err} (this server's context is {max_context} tokens)", param="messages",
                               code="context_length_exceeded") from None
            except UserError as err:
                raise ApiError(400, str(err)) from None
        turn.stop = stop
        turn.rounds_before = len(engine.rounds)  # a longer list afterwards: this turn's round was recorded
        return turn, chat, pipeline

    def finished(self, turn: Any, chat: Any, failed: bool = False) -> None:
        """After a reply (run by the memory writer, off the event loop): a round answered with
        memory on is written and becomes searchable before the reply ends. A failed generation
        recorded no round; the last round then is the client's own history: nothing is written.

        Raises:
            OSError: the memory file could not be written.
        """
        if turn.stats.finish_reason == "cancelled":
            self.cancelled += 1
        if failed or chat.memory is None or len(chat.engine.rounds) <= turn.rounds_before:
            return
        self.writer.write(chat.memory, chat.engine.rounds[-1])

    def end_turn(self, turn: Any, chat: Any, failed: bool = False) -> concurrent.futures.Future:
        """Queue :meth:`finished` on the memory writer's thread; the future says when the round
        is written (or raises the OSError that stopped it)."""
        return self.writer.submit(lambda: self.finished(turn, chat, failed))


def _extras(turn: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "sources" in turn.extras:
        out["sources"] = turn.extras["sources"]
    if "memories" in turn.extras:
        out["memories"] = turn.extras["memories"]
    if "dropped_rounds" in turn.extras:
        out["dropped_rounds"] = turn.extras["dropped_rounds"]
        out["dropped_because"] = turn.extras["dropped_because"]
    return out


def _usage(turn: Any) -> dict[str, int]:
    p, n = turn.stats.prompt_tokens, turn.stats.new_tokens
    return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


def _finish_reason(turn: Any) -> str:
    return "length" if turn.stats.finish_reason == "length" else "stop"


# -- the app ------------------------------------------------------------------------------------
def create_app(api: ApiService, host: str = "127.0.0.1") -> Any:
    """The FastAPI app; ``host``: the address it is bound to (the door answers to it, see
    :mod:`qwen_kit.door`)."""
    cfg = api.cfg
    policy = DoorPolicy.for_address(host, cfg.allowed_hosts, cfg.allowed_origins, json_posts=True, cors=True,
                                    authenticated=bool(api.keys))
    app = FastAPI(title="qwen_kit", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(DoorMiddleware, policy=policy)

    def error(err: ApiError) -> JSONResponse:
        headers = ({"WWW-Authenticate": "Bearer"} if err.status == 401 else
                   {"Retry-After": "1"} if err.status == 503 else None)
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    def login(request: Request) -> str | None:
        """The key's name, or None; raises 401 for a missing or wrong key when keys are set."""
        if not api.keys:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and token:
            for name, key in api.keys:
                if hmac.compare_digest(token.strip().encode(), key.encode()):
                    return name
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", kind="authentication_error",
                       code="invalid_api_key")

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError) -> JSONResponse:
        return error(err)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, err: HTTPException) -> JSONResponse:
        """Unknown paths (404) and wrong methods (405) in OpenAI's shape too."""
        what = {404: f"no route {request.method} {request.url.path}; this server answers POST /v1/chat/completions, "
                     "GET /v1/models and GET /health",
                405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        response = error(ApiError(err.status_code, what, code=code))
        for name, value in (err.headers or {}).items():  # 405 keeps its Allow header
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def on_crash(request: Request, err: Exception) -> JSONResponse:
        return error(ApiError(500, f"{type(err).__name__}: {err}", kind="server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher = getattr(api.backend, "batcher", None)
        return {"status": "ok", "model": api.base_name, "backend": getattr(api.backend, "name", "?"),
                "generating": getattr(batcher, "active", None),
                "waiting": batcher.waiting if batcher is not None else None,
                "cancelled": api.cancelled}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        login(request)
        created = int(api.started)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "qwen_kit"}
                                           for name in api.model_ids()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        who = login(request)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as err:
            raise ApiError(400, f"the request body is not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        include_usage = stream_usage(body)
        api.check_capacity()
        turn, chat, _ = await asyncio.to_thread(api.prepare, body, who)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = body["model"]
        if body.get("stream"):
            return StreamingResponse(_stream(api, turn, chat, cid, created, model, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        work = asyncio.wrap_future(api.generating.submit(turn.run))
        while not work.done():  # a client that hangs up frees its slot
            await asyncio.wait({work}, timeout=0.25)
            if not work.done() and await request.is_disconnected():
                turn.stopped.set()
        failure = work.exception()
        try:
            await asyncio.wrap_future(api.end_turn(turn, chat, failed=failure is not None))
        except OSError as err:
            failure = failure or err
        if failure is not None:
            raise ApiError(500, _failure_text(failure), kind="server_error")
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.text},
                             "finish_reason": _finish_reason(turn), "logprobs": None}],
                "usage": _usage(turn), "qwen_kit": _extras(turn)}

    return app


def _failure_text(err: BaseException) -> str:
    if isinstance(err, OSError):
        return f"the reply was generated but long-term memory could not be written: {err}"
    text = str(err)
    return text if text.startswith("generation failed") else f"generation failed: {type(err).__name__}: {err}"


async def _stream(api: ApiService, turn: Any, chat: Any, cid: str, created: int, model: str, include_usage: bool):
    """The reply as Server-Sent Events. Whatever raises, the stream ends with either an error
    event or the finish chunk (and usage), then ``[DONE]``."""
    usage_field = {"usage": None} if include_usage else {}  # OpenAI: null on every chunk but the last

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
        data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **usage_field, **more}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    ended = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        except RuntimeError:  # the server's loop has closed: nobody is listening
            pass

    def work() -> None:
        # one thread runs the whole turn, so a client that leaves cannot cut it short; the
        # memory write is queued from here too, so it happens even when nobody listens any more
        failure: BaseException | None = None
        try:
            for piece in turn:
                put(piece)
        except Exception as err:  # noqa: BLE001 - GenerationFailed, or anything else: the client is told
            failure = err
        try:
            written = api.end_turn(turn, chat, failed=failure is not None)
        except Exception as err:  # noqa: BLE001 - e.g. the writer already shut down
            written = concurrent.futures.Future()
            written.set_exception(err)
        put((ended, failure, written))

    threading.Thread(target=work, name="qwen_kit-stream", daemon=True).start()
    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""}, qwen_kit=_extras(turn))
        while True:
            item = await pieces.get()
            if isinstance(item, tuple) and item and item[0] is ended:
                break
            yield chunk({"content": item})
        finished = True
        _, failure, written = item
        try:
            await asyncio.wrap_future(written)
        except Exception as err:  # noqa: BLE001 - OSError writing memory, or anything else
            failure = failure or err
        if failure is not None:
            yield f"data: {json.dumps(ApiError(500, _failure_text(failure), kind='server_error').body())}\n\n"
        else:
            yield chunk({}, _finish_reason(turn))
            if include_usage:
                data = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": _usage(turn)}
                yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: generation stops at the next token and frees the slot
            turn.stopped.set()


# -- running it ---------------------------------------------------------------------------------
def build_service(cfg: ServeConfig, loaded: Any = None) -> ApiService:
    """Load the model (or connect to the remote backend) and open the pipeline's parts."""
    web = ConversationService(cfg, loaded)
    return ApiService(cfg, web, web.backend)


def run_server(cfg: ServeConfig) -> int:
    """``scripts/serve.py``: check keys and address, load, listen until Ctrl-C."""
    import uvicorn

    cfg.keys = read_api_keys(cfg)
    host, port = serve_address(cfg, cfg.keys)
    check_port_free(host, port)  # fail before minutes of loading
    api = build_service(cfg)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(api.model_ids())} at http://{shown}:{port}/v1 "
          f"({'API keys required' if api.keys else 'no API key'}; backend {getattr(api.backend, 'name', '?')})",
          file=sys.stderr)
    try:
        uvicorn.run(create_app(api, host), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        api.close()
        api.web.close_all()
        api.web.close_backend()
    return 0
