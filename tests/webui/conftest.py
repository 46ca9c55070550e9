"""Fixtures for the web UI: a real server process with the tiny model, and Debian's Chromium
driven by Selenium through Debian's chromedriver (nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

ARTIFACTS = ROOT / "test-artifacts" / "webui"
USER, PASSWORD = "tester", "s3cret-pass"
OTHER, OTHER_PASSWORD = "visitor", "an0ther-pass"  # a second login: sees none of USER's memories
SEEDED = [  # long-term memories the server starts with (the memory file's own format)
    {"id": "a1b2c3d4e5f6", "time": "2026-11-20 10:00:00", "session": "seed", "user": f"web:{USER}",
     "user_text": "My cat is called Mochi.", "reply": "Mochi is a lovely name."},
    {"id": "0f9e8d7c6b5a", "time": "2026-11-21 09:30:00", "session": "seed", "user": f"web:{USER}",
     "user_text": "I was born in Chengdu.", "reply": "Chengdu, the home of pandas!"},
]


def browser_paths() -> tuple[str, str] | None:
    """Chromium and its driver: QWEN_KIT_CHROMIUM / QWEN_KIT_CHROMEDRIVER, else Debian's."""
    chromium = os.environ.get("QWEN_KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("QWEN_KIT_CHROMEDRIVER") or shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def start_server(args: list[str], log: Path, timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """Start scripts/webui.py and wait until it answers HTTP; returns the process and URL."""
    import urllib.request

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "webui.py"), *args, "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"webui.py exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"webui.py did not answer within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


PROXIED_ORIGIN = "https://chat.lab.example"  # where users open the page when a proxy forwards it


@pytest.fixture(scope="session")
def server(tiny_qwen_dir, tmp_path_factory):
    """The page with the tiny model, the sample knowledge base and personas, a seeded memory
    file, and a login."""
    import json

    folder = tmp_path_factory.mktemp("webui")
    memory_file = folder / "chat_history.txt"
    memory_file.write_text("".join(json.dumps(r) + "\n" for r in SEEDED), encoding="utf-8")
    logins = folder / "logins.txt"  # the login from a file, as the docs advise (argv is readable by others)
    logins.write_text(f"{USER}:{PASSWORD}\n{OTHER}:{OTHER_PASSWORD}\n", encoding="utf-8")
    logins.chmod(0o600)
    proc, url = start_server(["--model", str(tiny_qwen_dir), "--kb", "data/knowledge", "--personas", "data/personas",
                              "--memory-file", str(memory_file), "--auth-file", str(logins),
                              "--seed", "7", "--max-new-tokens", "120", "--max-context", "1024",
                              "--allowed-origins", PROXIED_ORIGIN],
                             folder / "server.log")
    yield {"url": url, "memory_file": memory_file, "proc": proc, "log": folder / "server.log"}
    stop_server(proc)


def new_browser(profile: Path, language: str | None = None):
    """Headless Chromium driven by Selenium through chromedriver (skips the test without them)."""
    paths = browser_paths()
    if paths is None:
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (.ci/run does) to run the "
                    "browser tests")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if language:
        options.add_argument(f"--lang={language}")
        options.add_experimental_option("prefs", {"intl.accept_languages": language})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(options=options, service=Service(paths[1]))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = new_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()
