"""How each consumer reads a saved model folder, and where they disagree.

Each reader is a Python environment: this one (transformers 5, the kit), ``.venv-tf4``
(transformers 4, made by ``make tf4-venv``), OpenCompass's ``.venv-eval``, and vLLM's config
reader where vLLM is installed. ``reader_probe.py`` runs inside each and reports what that
reader really uses; :func:`compare` lists every field on which two reports differ.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen_kit.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("reader_probe.py")
LOGITS_TOLERANCE = 1e-4


@dataclass
class Reader:
    name: str
    python: str
    kind: str = "transformers"  # or "vllm": vLLM's config reader


def known_readers() -> list[Reader]:
    """This environment, then every other one that exists on this machine."""
    readers = [Reader("kit", sys.executable)]
    for name, venv in (("transformers4", ".venv-tf4"), ("opencompass", ".venv-eval")):
        exe = ROOT / venv / "bin" / "python"
        if exe.is_file():
            readers.append(Reader(name, str(exe)))
    vllm_python = os.environ.get("QWEN_KIT_VLLM_PYTHON")
    if vllm_python:
        readers.append(Reader("vllm", vllm_python, "vllm"))
    elif importlib.util.find_spec("vllm") is not None:
        readers.append(Reader("vllm", sys.executable, "vllm"))
    return readers


def probe(reader: Reader, folder: str | Path, logits: bool = False, timeout: int = 600) -> dict[str, Any]:
    """Run the probe under ``reader``; a reader that cannot read the folder at all comes back
    as a report whose ``problems`` say why."""
    cmd = [reader.python, str(PROBE), str(folder)] + (["--logits"] if logits else []) + ["--reader", reader.kind]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRANSFORMERS_VERBOSITY"] = "error"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(Path(folder).parent))
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"name": reader.name, "reader": reader.name, "problems": [f"cannot read the folder: {last[:300]}"]}
    report = json.loads(res.stdout)
    report["name"] = reader.name
    return report


def _flat(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section in ("config", "effective", "generation", "tokenizer"):
        for key, value in (report.get(section) or {}).items():
            out[f"{section}.{key}"] = value
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Every disagreement between two probe reports, one line each."""
    lines = [f"{b.get('name', b['reader'])}: {p}" for p in b.get("problems", []) if p not in a.get("problems", [])]
    fa, fb = _flat(a), _flat(b)
    for key in sorted(set(fa) & set(fb)):
        if fa[key] != fb[key]:
            if key == "tokenizer.probe_ids":
                lines.append(f"{key}: the two readers split the same text differently")
            else:
                lines.append(f"{key}: {a.get('name', 'a')} reads {fa[key]!r}, {b.get('name', 'b')} reads {fb[key]!r}")
    if "logits" in a and "logits" in b:
        diff = max_abs_diff(a["logits"], b["logits"])
        if diff is None or diff > LOGITS_TOLERANCE:
            lines.append(f"logits: max abs difference {diff if diff is not None else 'n/a (shapes differ)'} "
                         f"(tolerance {LOGITS_TOLERANCE})")
    return lines


def max_abs_diff(x: list[list[float]], y: list[list[float]]) -> float | None:
    if len(x) != len(y) or any(len(r) != len(s) for r, s in zip(x, y)):
        return None
    return max((abs(p - q) for r, s in zip(x, y) for p, q in zip(r, s)), default=0.0)


def check_folder(folder: str | Path, readers: list[Reader] | None = None, logits: bool = False) -> dict[str, Any]:
    """Probe ``folder`` under every reader and compare each with the kit's own.

    Returns ``{"reports": [...], "disagreements": {reader: [lines]}}``.

    Raises:
        UserError: ``folder`` is not a model folder.
    """
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json; pass a model folder (a LoRA adapter folder holds no model: "
                        "merge it first with make merge)")
    readers = readers or known_readers()
    reports = [probe(r, folder, logits=logits and r.kind == "transformers") for r in readers]
    base = reports[0]
    return {"reports": reports,
            "disagreements": {r["name"]: compare(base, r) for r in reports[1:]}}


def print_check(folder: str | Path, logits: bool = False, json_out: str | None = None) -> int:
    """``scripts/check_model.py``: print each reader's view and every disagreement; returns 1
    when any reader disagrees with the kit, else 0."""
    result = check_folder(folder, logits=logits)
    reports = result["reports"]
    keys = ["effective.rope_base", "config.rope_type", "config.sliding_window_layers", "config.tie_word_embeddings",
            "config.dtype", "generation.eos_token_ids", "tokenizer.eos_token", "tokenizer.chat_template_sha256"]
    print(f"{'':34}" + "".join(f"{r['name'][:22]:>24}" for r in reports))
    print(f"{'reader':34}" + "".join(f"{r['reader'][:22]:>24}" for r in reports))
    for key in keys:
        print(f"{key:34}" + "".join(f"{str(_flat(r).get(key, '-'))[:22]:>24}" for r in reports))
    bad = 0
    for name, lines in result["disagreements"].items():
        if lines:
            bad += 1
            print(f"\n{name} disagrees with the kit:")
            for line in lines:
                print(f"  - {line}")
    problems = [f"{r['name']}: {p}" for r in reports[:1] for p in r.get("problems", [])]
    for p in problems:
        print(f"note: {p}")
    if len(reports) == 1:
        print("\nonly this environment was found; `make tf4-venv` adds a transformers 4 reader")
    elif not bad:
        print(f"\nall {len(reports)} readers agree")
    else:
        from qwen_kit.model.portable import portability_problems

        if portability_problems(folder):
            print(f"\nrepair with: make portable MODEL={folder}")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 1 if bad else 0
