"""The door of every server the kit runs (the API server and the web page): which ``Host``
names it answers to, which browser origins may call it, and what a POST body may be.

Why: a server on ``127.0.0.1`` is reachable from every web page the user opens. A page can
send a "simple" cross-origin POST (``Content-Type: text/plain``) without asking first, and with
DNS rebinding (``evil.example`` made to resolve to ``127.0.0.1``) it can read the answers too.
The checks that stop this:

- **Host**: only names the server listens as are answered: the loopback names, the address it
  is bound to, and any name added with ``--allowed-hosts`` (a rebinding page's requests carry
  its own name). On a wildcard bind (``0.0.0.0``, ``::``) every IP literal is accepted too: a
  rebinding page cannot make the browser send an IP address as its Host. A server reachable
  from other machines *and* behind keys or logins answers any Host: a rebinding page has
  neither the key nor the login cookie, and proxies such as AutoDL's custom service forward
  names the kit cannot know in advance.
- **Origin**: a browser request (one with an ``Origin`` header) is refused unless it comes from
  the server's own origin or one listed with ``--allowed-origins``; those get CORS headers.
  Requests without ``Origin`` (curl, the ``openai`` client, servers) are not from a browser.
- **Content-Type**: the API's POST routes take ``application/json`` only (415 otherwise), so no
  body a browser sends without a preflight is ever parsed.

Refusals come back in OpenAI's error shape (``{"error": {...}}``) on both doors.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from qwen_kit.errors import UserError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
SHARE_HOSTS = ".gradio.live"  # the page's public --share link arrives under this name


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _names(values: Iterable[str] | None) -> list[str]:
    """Entries of a repeatable, comma-separated option, stripped and lower-cased."""
    return [part.strip().lower() for value in values or () for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class DoorPolicy:
    """What the door lets in. ``hosts``: names without port (``*``: any; ``.example.com``: that
    domain and its subdomains); ``origins``: ``scheme://host[:port]`` (``*``: any);
    ``wildcard_bind``: bound to every interface; ``json_posts``: POST bodies must be JSON."""

    hosts: frozenset[str]
    origins: frozenset[str] = frozenset()
    wildcard_bind: bool = False
    json_posts: bool = False
    cors: bool = False  # answer preflights and add CORS headers for the allowed origins

    @classmethod
    def for_address(cls, host: str, allowed_hosts: Iterable[str] | None = None,
                    allowed_origins: Iterable[str] | None = None, share: bool = False, json_posts: bool = False,
                    cors: bool = False, authenticated: bool = False) -> "DoorPolicy":
        """The policy of a server bound to ``host``; ``authenticated``: every route that gives
        anything away needs a key or a login."""
        names = set(LOOPBACK_NAMES) | set(_names(allowed_hosts))
        if authenticated and not is_loopback(host):
            names.add("*")
        if host.lower() not in WILDCARDS:
            names.add(host.strip("[]").lower())
        if share:
            names.add(SHARE_HOSTS)
        origins = {o.rstrip("/") for o in _names(allowed_origins)}
        return cls(frozenset(names), frozenset(origins), host.lower() in WILDCARDS, json_posts, cors)

    def host_allowed(self, header: str) -> bool:
        name = _host_name(header)
        if not name:
            return False
        if "*" in self.hosts or name in self.hosts:
            return True
        if any(h.startswith(".") and (name.endswith(h) or name == h[1:]) for h in self.hosts):
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False
        return self.wildcard_bind or ip.is_loopback

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if "*" in self.origins or _without_default_port(origin) in {_without_default_port(o) for o in self.origins}:
            return True
        scheme, sep, rest = origin.partition("://")
        if not sep:
            return False
        # the server's own origin: the page it served, whether or not either side names the default port
        return (_without_default_port(origin)
                == _without_default_port(f"{scheme}://{host_header.strip().lower()}"))


def _without_default_port(origin: str) -> str:
    """``scheme://host[:port]`` with the scheme's default port left out (``http://a:80`` is ``http://a``)."""
    origin = origin.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def _host_name(header: str) -> str:
    """``name`` of a Host header ``name[:port]`` / ``[v6]:port``, lower-cased; "" when malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, sep, _ = header[1:].partition("]")
        return name if sep else ""
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def error_body(message: str, code: str, kind: str = "invalid_request_error", param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class DoorMiddleware:
    """ASGI middleware applying a :class:`DoorPolicy` before the app sees a request (plain ASGI,
    not Starlette's BaseHTTPMiddleware, so streamed replies and disconnects pass untouched)."""

    def __init__(self, app: Any, policy: DoorPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, origin = headers.get("host", ""), headers.get("origin")
        refusal = None
        if not self.policy.host_allowed(host):
            refusal = (403, f"Host {host!r} is not a name this server answers to; if it is this machine's name, "
                            "start the server with --allowed-hosts NAME", "host_not_allowed")
        elif origin is not None and not self.policy.origin_allowed(origin, host):
            refusal = (403, f"requests from the web page at {origin!r} are not allowed; to let a page call this "
                            "server, start it with --allowed-origins ORIGIN", "origin_not_allowed")
        elif scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        if refusal is not None:
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
                return
            return await _answer(send, *refusal)
        method = scope.get("method", "GET")
        cors = [] if origin is None or not self.policy.cors else [(b"access-control-allow-origin", origin.encode()),
                                                                  (b"vary", b"Origin")]
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers and self.policy.cors:
            asked = headers.get("access-control-request-headers", "authorization, content-type")
            return await _answer(send, 204, None, None, [*cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                                                         (b"access-control-allow-headers", asked.encode()),
                                                         (b"access-control-max-age", b"600")])
        if method == "POST" and self.policy.json_posts:
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return await _answer(send, 415, f"the body must be JSON with 'Content-Type: application/json', "
                                                f"not {kind or 'no Content-Type'!r}", "unsupported_media_type",
                                     cors)
        if not cors:
            return await self.app(scope, receive, send)

        async def with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        return await self.app(scope, receive, with_cors)


async def _answer(send: Any, status: int, message: str | None, code: str | None,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_body(message, code) if message else b""
    head = [*(headers or []), (b"content-length", str(len(body)).encode())]
    if body:
        head.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def check_port_free(host: str, port: int) -> None:
    """Fail in a second, before the model loads, when something already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); "
                            "choose another --port or stop what uses it") from None
