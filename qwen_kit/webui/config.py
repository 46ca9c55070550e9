"""The web page's own settings: its address, its logins, and the rule that a page others can
reach needs a login. Everything else (the model, knowledge bases, personas, memories,
conversations) is the conversation service's (:mod:`qwen_kit.service`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_kit.door import is_loopback
from qwen_kit.errors import UserError
from qwen_kit.privacy import warn_if_shared
from qwen_kit.service import ServiceConfig


@dataclass
class WebConfig(ServiceConfig):
    """Everything ``scripts/webui.py`` accepts besides the chat's own flags (``memory`` is the
    memory switch's starting position)."""

    host: str | None = None  # None: the platform's default (AutoDL: 0.0.0.0)
    port: int | None = None
    share: bool = False
    auth: str | None = None  # "user:password" on the command line (warned: argv is visible to others)
    auth_file: str | None = None  # lines of "user:password"
    no_auth: bool = False
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides loopback and --host
    allowed_origins: list[str] = field(default_factory=list)  # pages (scheme://host[:port]) besides its own, e.g. behind a proxy


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


