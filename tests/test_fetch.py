"""Downloads and archives: a crafted zip-slip archive, a wrong checksum, a resumed download."""

from __future__ import annotations

import hashlib
import http.server
import stat
import threading
import zipfile

import pytest

from qwen_kit.errors import UserError
from qwen_kit.fetch import download, safe_extract

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0] or 0)
        # Recorded before the body goes out: the client can finish reading, and the test
        # assert, before this thread runs another line.
        self.server.starts.append(start)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.starts = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


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
    url = f"http://127.0.0.1:{server.server_address[1]}/file.zip"
    with pytest.raises(UserError, match="checksum mismatch"):
        download(url, tmp_path / "file.zip", sha256="0" * 64)
    assert not (tmp_path / "file.zip").exists() and not (tmp_path / "file.zip.part").exists()


def test_a_partial_download_resumes_and_is_verified(tmp_path, server):
    url = f"http://127.0.0.1:{server.server_address[1]}/file.zip"
    (tmp_path / "file.zip.part").write_bytes(PAYLOAD[:300_000])  # a connection that broke
    path = download(url, tmp_path / "file.zip", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert path.read_bytes() == PAYLOAD and server.starts == [300_000]


def test_an_unreachable_host_fails_in_one_line_after_retries(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    with pytest.raises(UserError, match="failed 2 times"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", retries=2, timeout=2)
