"""The running server over HTTP, as a script or another person on the network would use it:
logins, file requests outside the configured folders, and the API behind the page."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.webui.conftest import PASSWORD, PROXIED_ORIGIN, USER

pytestmark = pytest.mark.timeout(300)


def test_wrong_password_is_refused(server):
    import httpx

    with httpx.Client(base_url=server["url"]) as client:
        bad = client.post("/login", data={"username": USER, "password": PASSWORD + "x"})
        assert bad.status_code == 400 and not client.cookies
        assert client.get("/config").status_code == 401  # nothing of the page without a login
        good = client.post("/login", data={"username": USER, "password": PASSWORD})
        assert good.status_code == 200
        assert client.get("/config").status_code == 200


def test_a_foreign_host_is_refused(server):
    """DNS rebinding: a page on evil.example (resolving to 127.0.0.1) reaching the page."""
    import httpx

    port = server["url"].rsplit(":", 1)[1]
    r = httpx.get(server["url"] + "/", headers={"Host": f"evil.example:{port}"})
    assert r.status_code == 403 and "Host" in r.text
    r = httpx.post(server["url"] + "/login", headers={"Host": f"evil.example:{port}"},
                   data={"username": USER, "password": PASSWORD})
    assert r.status_code == 403
    assert httpx.get(server["url"] + "/", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_clicks_from_another_origin_are_refused_unless_that_origin_is_allowed(server):
    """Behind a proxy that forwards its own Host the page's requests carry the proxy's origin:
    --allowed-origins lets exactly that origin in; any other web page stays out."""
    import httpx

    login = {"username": USER, "password": PASSWORD}
    r = httpx.post(server["url"] + "/login", headers={"Origin": "https://evil.example"}, data=login)
    assert r.status_code == 403 and "origin" in r.text
    assert httpx.post(server["url"] + "/login", headers={"Origin": PROXIED_ORIGIN}, data=login).status_code == 200
    assert httpx.post(server["url"] + "/login", headers={"Origin": server["url"]}, data=login).status_code == 200


@pytest.mark.parametrize("path", ["/etc/hostname", str(ROOT / "setup.cfg"), str(ROOT / "data/knowledge/library.md")])
def test_files_are_never_served(server, path):
    """Not even the knowledge-base files: the page shows chunks it retrieved, not files."""
    import httpx

    with httpx.Client(base_url=server["url"]) as client:
        client.post("/login", data={"username": USER, "password": PASSWORD})
        r = client.get(f"/gradio_api/file={path}")
        assert r.status_code == 403, r.text


def test_api_refuses_what_was_not_offered_and_exports(server, tmp_path):
    from gradio_client import Client

    client = Client(server["url"], auth=(USER, PASSWORD), verbose=False, download_files=str(tmp_path))
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("/etc/passwd", "(none)", False, api_name="/configure")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("(none)", str(ROOT / "qwen_kit"), False, api_name="/configure")
    # the API is the page: a message sent through it is in the exported conversation
    client.predict("Hello from the API", "(none)", "(none)", False, False, 0.7, 0.8, 20, 1.05, 24, api_name="/send")
    exported = client.predict("(none)", "(none)", False, api_name="/on_export")
    data = json.loads(open(exported["value"] if isinstance(exported, dict) else exported, encoding="utf-8").read())
    assert [r["user"] for r in data["rounds"]] == ["Hello from the API"]
    assert data["rounds"][0]["assistant"]


def test_stopping_the_server_keeps_open_conversations_in_memory(tiny_qwen_dir, tmp_path):
    """A conversation still open when the server is stopped (kill, Ctrl+C) is not lost: its
    rounds go to long-term memory, as at the end of a terminal chat."""
    from gradio_client import Client

    from tests.webui.conftest import start_server, stop_server

    memory = tmp_path / "chat_history.txt"
    proc, url = start_server(["--model", str(tiny_qwen_dir), "--memory", "--memory-file", str(memory),
                              "--seed", "1"], tmp_path / "server.log")
    try:
        client = Client(url, verbose=False)
        client.predict("My locker number is 4417.", "(none)", "(none)", True, False, 0.7, 0.8, 20, 1.05, 16,
                       api_name="/send")
        assert "4417" in memory.read_text(encoding="utf-8")  # written as soon as answered, though still in the prompt
    finally:
        stop_server(proc)
    assert proc.returncode == 0, (tmp_path / "server.log").read_text(errors="replace")[-2000:]
    saved = [json.loads(line) for line in memory.read_text(encoding="utf-8").splitlines()]
    assert [r["user_text"] for r in saved] == ["My locker number is 4417."]  # once: stopping adds no copy


def test_busy_port_is_refused_before_the_model_loads(tmp_path):
    import socket

    from tests.conftest import run_script

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_script("webui.py", "--model", "no-such-model-needed", "--port", str(port),
                       "--memory-file", str(tmp_path / "m.txt"), timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1, err
