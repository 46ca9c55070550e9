"""Downloads and archives: a crafted zip-slip archive, a wrong checksum, a resumed download,
truncated and chunked responses, a 416 on a finished partial file, plain-HTTP refusal."""

from __future__ import annotations

import hashlib
import http.server
import json
import stat
import threading
import zipfile

import pytest

from qwen_kit.errors import UserError
from qwen_kit.eval.opencompass import _checked
from qwen_kit.fetch import download, safe_extract

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support, the way a file host does. ``server.cuts`` holds, per
    request in order, how many body bytes to send before dropping the connection (None: all);
    ``server.chunked`` sends the body with chunked transfer encoding and no Content-Length."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - the stdlib's name
        start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0] or 0)
        # Recorded before the body goes out: the client can finish reading, and the test
        # assert, before this thread runs another line.
        self.server.starts.append(start)
        cut = self.server.cuts.pop(0) if self.server.cuts else None
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        if self.server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        sent = body if cut is None else body[:cut]
        if self.server.chunked:
            for i in range(0, len(sent), 65536):
                piece = sent[i:i + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if cut is None:
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(sent)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.starts, httpd.cuts, httpd.chunked = [], [], False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/file.zip"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("evil", ["../escape.txt", "/tmp/absolute.txt", "data/../../escape.txt", "C:/windows.txt"])
def test_a_zip_slip_archive_is_refused_before_anything_is_written(tmp_path, evil):
    archive = _zip(tmp_path / "a.zip", [("data/ok.txt", "fine"), (evil, "owned")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UserError, match="outside"):
        safe_extract(archive, dest)
    assert list(dest.rglob("*")) == [] and not (tmp_path / "escape.txt").exists()


def test_a_symbolic_link_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_a_good_archive_unpacks_where_asked(tmp_path):
    archive = _zip(tmp_path / "g.zip", [("data/mmlu/a.csv", "x"), ("data/other/b.txt", "y")])
    written = safe_extract(archive, tmp_path / "out", keep=lambda m: m.split("data/", 1)[1] if "mmlu" in m else None)
    assert written == [(tmp_path / "out" / "mmlu" / "a.csv").resolve()] and written[0].read_text() == "x"


def test_a_wrong_checksum_deletes_the_download(tmp_path, server):
    with pytest.raises(UserError, match="checksum mismatch"):
        download(server.url, tmp_path / "file.zip", sha256="0" * 64, allow_http=True)
    assert not (tmp_path / "file.zip").exists() and not (tmp_path / "file.zip.part").exists()


def test_a_partial_download_resumes_and_is_verified(tmp_path, server):
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD[:300_000])  # a connection that broke
    path = download(server.url, tmp_path / "file.zip", sha256=PAYLOAD_SHA, allow_http=True)
    assert path.read_bytes() == PAYLOAD and server.starts == [300_000]


def test_an_unreachable_host_fails_in_one_line_after_retries(tmp_path, no_sleep):
    with pytest.raises(UserError, match="failed 2 times"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", retries=2, timeout=2, allow_http=True)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_connection_dropped_mid_body_is_resumed_to_the_whole_file(tmp_path, server, no_sleep, chunked):
    server.chunked = chunked
    server.cuts = [300_000]  # the first response stops early, the second is whole
    path = download(server.url, tmp_path / "file.zip", allow_http=True)
    assert path.read_bytes() == PAYLOAD and server.starts == [0, 300_000]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_download_that_always_stops_early_fails_in_one_line_and_is_never_finished(tmp_path, server, no_sleep,
                                                                                    chunked):
    server.chunked = chunked
    server.cuts = [300_000, 0, 0]  # the server keeps dropping the connection
    with pytest.raises(UserError, match="failed 3 times") as err:
        download(server.url, tmp_path / "file.zip", allow_http=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "file.zip").exists()
    assert (tmp_path / "file.zip.part").read_bytes() == PAYLOAD[:300_000]  # kept for the next run


def test_a_truncated_archive_never_gets_its_checksum_recorded(tmp_path, server, no_sleep, monkeypatch):
    # make eval-data trusts a URL's first download when the kit has no checksum for it:
    # a truncated file must not become the reference every later, correct download fails against.
    monkeypatch.setenv("QWEN_KIT_ALLOW_HTTP", "1")
    server.cuts = [300_000, 0, 0]
    ledger = tmp_path / "checksums.json"
    with pytest.raises(UserError):
        _checked(server.url, tmp_path / "file.zip", ledger)
    assert not ledger.exists() and not (tmp_path / "file.zip").exists()
    server.cuts = []
    _checked(server.url, tmp_path / "file.zip", ledger)
    assert json.loads(ledger.read_text()) == {server.url: PAYLOAD_SHA}


def test_a_416_on_a_complete_partial_file_finishes_it(tmp_path, server, no_sleep):
    # The previous run received every byte but stopped before renaming (killed, or the old loop).
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD)
    path = download(server.url, tmp_path / "file.zip", sha256=PAYLOAD_SHA, allow_http=True)
    assert path.read_bytes() == PAYLOAD and server.starts == [len(PAYLOAD)]
    assert not (tmp_path / "file.zip.part").exists()


def test_a_partial_file_longer_than_the_remote_one_starts_over(tmp_path, server, no_sleep):
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD + b"junk")
    path = download(server.url, tmp_path / "file.zip", allow_http=True)
    assert path.read_bytes() == PAYLOAD and server.starts == [len(PAYLOAD) + 4, 0]


def test_plain_http_is_refused_unless_allowed(tmp_path, server, monkeypatch):
    monkeypatch.delenv("QWEN_KIT_ALLOW_HTTP", raising=False)
    with pytest.raises(UserError, match="https"):
        download(server.url, tmp_path / "file.zip")
    assert server.starts == [] and not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="https"):
        download("file:///etc/passwd", tmp_path / "passwd", allow_http=True)
    monkeypatch.setenv("QWEN_KIT_ALLOW_HTTP", "1")
    assert download(server.url, tmp_path / "file.zip").read_bytes() == PAYLOAD


class _Redirect(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(302)
        self.send_header("Location", self.server.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_to_plain_http_is_refused_unless_http_is_allowed(server):
    """The scheme rule holds for every hop, not only the first address: a server (or whoever
    answers for it) cannot send a download on to http:// by redirecting it."""
    from qwen_kit.fetch import opener

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    httpd.target = server.url  # an http:// address
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    start = f"http://127.0.0.1:{httpd.server_address[1]}/start"
    try:
        with pytest.raises(UserError, match="only https://"):
            opener(allow_http=False).open(start, timeout=10)
        with opener(allow_http=True).open(start, timeout=10) as response:
            assert response.read() == PAYLOAD
    finally:
        httpd.shutdown()
