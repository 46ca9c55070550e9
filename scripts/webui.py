#!/usr/bin/env python
"""Chat in a browser page: the same engine as chat.py, with knowledge bases, personas,
long-term memory and sampling settings on the page. Needs the [webui] extra (Gradio).

    python scripts/webui.py --model demo --kb data/knowledge --personas data/personas
    python scripts/webui.py --host 0.0.0.0 --port 6006 --auth-file ~/.webui_logins   # AutoDL custom service
    QWEN_KIT_WEBUI_AUTH=me:secret python scripts/webui.py --share                  # Kaggle notebook
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qwen_kit.chat.pipeline import ChatConfig  # noqa: E402
from qwen_kit.service.options import add_service_options, split_service_args  # noqa: E402
from qwen_kit.entry import run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None):
    from qwen_kit.webui.config import WebConfig

    p = argparse.ArgumentParser(description="Browser chat over the qwen_kit chat engine (Gradio).")
    s = add_service_options(p, offered="the page may offer", default_port=7860,
                            memory_help="start with the long-term memory switch on")
    s.add_argument("--share", action="store_true", help="a public gradio.live link (Kaggle notebooks)")
    s.add_argument("--auth-file", metavar="FILE", help="logins, one USER:PASSWORD per line (needed beyond "
                   "localhost); or set QWEN_KIT_WEBUI_AUTH=USER:PASSWORD")
    s.add_argument("--auth", metavar="USER:PASSWORD", help="a login on the command line (works, with a warning: "
                   "others can read argv)")
    s.add_argument("--no-auth", action="store_true", help="serve beyond localhost without a login")
    s.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME[,NAME]",
                   help="Host names the page answers to besides localhost and --host (e.g. the name a proxy "
                        "or AutoDL forwards as; .example.com: that domain and its subdomains; *: any)")
    s.add_argument("--allowed-origins", action="append", default=[], metavar="ORIGIN[,ORIGIN]",
                   help="the address (scheme://host[:port]) the page is opened at when a proxy forwards it "
                        "under another Host; the page's own address needs nothing")
    a = vars(p.parse_args(argv))
    web = split_service_args(a, ("share", "auth", "auth_file", "no_auth", "allowed_hosts", "allowed_origins"))
    return WebConfig(chat=ChatConfig(**a), **web)


if __name__ == "__main__":
    from qwen_kit.webui.app import run_webui

    run_cli(lambda: run_webui(parse_args()), prog="webui.py")
