"""The running server over HTTP, as a script or another person on the network would use it:
logins, file requests outside the configured folders, and the API behind the page."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.webui.conftest import PASSWORD, USER

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
