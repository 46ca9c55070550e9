"""llama.cpp as a judge and a peer: where its venv is, and one call into it.

llama-cpp-python is not a dependency of the kit: ``make llama-venv`` builds it into its own venv
(``.venv-llama``), and the kit talks to it through :mod:`qwen_kit.export.llama_probe`, a script
run by path with that venv's Python, JSON in and out.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from qwen_kit.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("llama_probe.py")
VENV_ENV = "QWEN_KIT_LLAMA_VENV"


def llama_python() -> Path | None:
    """The Python of the llama.cpp venv: ``$QWEN_KIT_LLAMA_VENV``, else ``.venv-llama`` in the
    checkout; None when neither has one with llama_cpp importable."""
    venv = Path(os.environ.get(VENV_ENV) or ROOT / ".venv-llama").expanduser()
    python = venv / "bin" / "python"
    if not python.is_file():
        return None
    found = subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True)
    return python if found.returncode == 0 else None


def run_llama(request: dict[str, Any], timeout: int = 600) -> dict[str, Any]:
    """Send ``request`` (see :mod:`qwen_kit.export.llama_probe`) to llama.cpp; return its answer.

    Raises:
        UserError: no llama.cpp venv (``make llama-venv``), or llama.cpp refused the file.
    """
    python = llama_python()
    if python is None:
        raise UserError(f"llama.cpp's Python bindings are not installed; run `make llama-venv` "
                        f"(or set {VENV_ENV} to a venv with llama-cpp-python)")
    try:
        done = subprocess.run([str(python), str(PROBE)], input=json.dumps(request), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"llama.cpp did not finish with {request.get('model')} within {timeout} s; "
                        "a larger file needs a longer timeout or fewer tokens") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"llama.cpp could not run {request.get('model')}: {last}")
    return json.loads(done.stdout)
