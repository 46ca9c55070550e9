"""Running OpenCompass itself, from its own venv (``.venv-eval``, made by ``make eval-venv``).

OpenCompass 0.5.4 cannot share a venv with the training stack (it needs transformers<5,
numpy<2, datasets<4, pyarrow<26), so the kit calls its ``opencompass`` command as a subprocess
with the settings the original work used: a base HF model, max-seq-len 2048, batch size 8, the
``example`` summariser; ``--hf-num-gpus`` is GPUs per task (0 on CPU), ``--max-num-workers`` the
number of tasks run side by side — for small models several workers beat sharding one model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from qwen_kit.errors import UserError
from qwen_kit.eval.datasets import BUILTIN, data_roots

VENV = Path(__file__).resolve().parents[2] / ".venv-eval"  # beside .venv, made by make eval-venv
# files each config reads (under <root>/data/), including the contamination annotations the
# *_clean_* configs would otherwise fetch from GitHub at start-up
NEEDS = {
    "mmlu_ppl": ["mmlu/dev/abstract_algebra_dev.csv", "mmlu/test/abstract_algebra_test.csv"],
    "hellaswag_clean_ppl": ["hellaswag/hellaswag.jsonl", "hellaswag/hellaswag_val_contamination_annotations.json"],
    "winogrande_ll": ["winogrande/dev.jsonl"],
    "ARC_e_ppl": ["ARC/ARC-e/ARC-Easy-Dev.jsonl"],
    "ARC_c_clean_ppl": ["ARC/ARC-c/ARC-Challenge-Test.jsonl", "ARC/ARC-c/ARC_c_test_contamination_annotations.json"],
    "SuperGLUE_BoolQ_few_shot_ppl": ["SuperGLUE/BoolQ/val.jsonl"],
}
OSS = "https://opencompass.oss-cn-shanghai.aliyuncs.com/datasets/data"
# sha256 of each file, checked after download. None: not yet recorded in the kit (this project's
# machines cannot reach these hosts); the first download then records its hash in
# data/checksums.json beside the data, and every later use is checked against that.
SHA256: dict[str, str | None] = {}
DOWNLOADS = [  # (url, what it holds) — the addresses OpenCompass 0.5.4 itself downloads from (over HTTPS)
    (f"{OSS}/mmlu.zip", "mmlu/"),
    (f"{OSS}/hellaswag.zip", "hellaswag/"),
    (f"{OSS}/ARC.zip", "ARC/"),
    (f"{OSS}/SuperGLUE.zip", "SuperGLUE/"),
    ("https://github.com/open-compass/opencompass/releases/download/0.2.2.rc1/OpenCompassData-core-20240207.zip",
     "winogrande/ (from the core data archive)"),
]
ANNOTATIONS = [
    ("https://github.com/liyucheng09/Contamination_Detector/releases/download/v0.1.1rc2/"
     "hellaswag_annotations_with_line_index.json", "hellaswag/hellaswag_val_contamination_annotations.json"),
    ("https://github.com/liyucheng09/Contamination_Detector/releases/download/v0.1.1rc/ARC_annotations.json",
     "ARC/ARC-c/ARC_c_test_contamination_annotations.json"),
]


def opencompass_exe(venv: Path = VENV) -> Path:
    exe = venv / "bin" / "opencompass"
    if not exe.is_file():
        raise UserError(f"OpenCompass is not installed in {venv}; run `make eval-venv` (about a minute, its own venv)")
    return exe


def data_root_for(datasets: Sequence[str], data_root: str | None = None) -> Path:
    """The folder holding ``data/`` with every file the datasets need (what OpenCompass calls
    COMPASS_DATA_CACHE); a missing file is reported with the path OpenCompass expects."""
    roots = [Path(data_root).expanduser()] if data_root else data_roots()
    needed = [f for d in datasets if d in NEEDS for f in NEEDS[d]]
    for root in roots:
        if all((root / "data" / f).exists() for f in needed):
            return root
    root = roots[0]
    missing = next(f for f in needed if not (root / "data" / f).exists())
    raise UserError(f"OpenCompass data not found: {root / 'data' / missing} is missing. Fetch it once with "
                    "`make eval-data` (or copy a data/ folder there; docs/evaluation.md)")


def build_command(model: str, datasets: Sequence[str], work_dir: str | Path, adapter: str | None = None,
                  gpus: int = 0, workers: int = 1, tokenizer: str | None = None, batch_size: int = 8,
                  max_seq_len: int = 2048, exe: str | Path = "opencompass") -> list[str]:
    builtin = [d for d in datasets if d in BUILTIN]
    custom = [d for d in datasets if d not in BUILTIN]
    unknown = [d for d in custom if not d.endswith((".jsonl", ".csv"))]
    if unknown:
        raise UserError(f"unknown dataset {unknown[0]!r}; known: {', '.join(BUILTIN)}, or one custom .jsonl/.csv file")
    if len(custom) > 1:
        raise UserError("OpenCompass's command line takes one custom dataset file per run; run them one at a time")
    cmd = [str(exe), "--hf-type", "base", "--hf-path", model, "--max-seq-len", str(max_seq_len),
           "--batch-size", str(batch_size), "--hf-num-gpus", str(gpus), "--max-num-workers", str(max(workers, 1)),
           "-w", str(work_dir)]
    if builtin:
        cmd += ["--datasets", *builtin, "--summarizer", "example"]
    if custom:
        cmd += ["--custom-dataset-path", str(Path(custom[0]).resolve()), "--custom-dataset-data-type", "mcq",
                "--custom-dataset-infer-method", "ppl"]
    if tokenizer:
        cmd += ["--tokenizer-path", tokenizer]
    if adapter:
        cmd += ["--peft-path", adapter]
    return cmd


def run_opencompass(model: str, datasets: Sequence[str], adapter: str | None = None, gpus: int | None = None,
                    workers: int = 1, out: str | Path = "output/opencompass", data_root: str | None = None,
                    dry_run: bool = False) -> int:
    """Resolve the model to a folder, check the data, run OpenCompass; returns its exit code."""
    from qwen_kit.model.resolve import resolve_model

    ref = resolve_model(model)
    if ref.source == "demo":
        raise UserError("OpenCompass cannot load the GGUF demo model; give it a Hugging Face model folder or hub id")
    root = data_root_for(datasets, data_root) if any(d in NEEDS for d in datasets) else None
    work = Path(out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if gpus is None:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    # absolute: OpenCompass runs in the data folder (it resolves ./data/... from there)
    if not dry_run:  # the model first: a folder OpenCompass would misread is refused before anything runs
        check_readable_by_opencompass(ref.path)
    exe = (opencompass_exe() if not dry_run else VENV / "bin" / "opencompass").resolve()
    cmd = build_command(str(ref.path), datasets, work, adapter or (str(ref.adapter) if ref.adapter else None),
                        gpus, workers, exe=exe)
    env = {**os.environ, **({"COMPASS_DATA_CACHE": str(root)} if root else {})}
    print("+ " + " ".join(cmd), file=sys.stderr)
    if dry_run:
        return 0
    return subprocess.call(cmd, env=env, cwd=str(root) if root else None)


def check_readable_by_opencompass(folder: Path, venv: Path = VENV) -> None:
    """Refuse a model folder that OpenCompass's transformers 4 would read as another model.

    First the known format changes (fast, no subprocess), then, as OpenCompass's own venv reads
    the config and tokenizer, every field it sees differently from the kit.

    Raises:
        UserError: naming what differs and the command that repairs the folder.
    """
    from qwen_kit.model.portable import REPAIR_HINT, portability_problems
    from qwen_kit.model.readers import Reader, check_folder

    fix = REPAIR_HINT.format(folder=folder)
    problems = portability_problems(folder)
    if problems:
        raise UserError(f"OpenCompass (transformers 4) would read {folder} as a different model: "
                        f"{'; '.join(problems)}. Repair it in place with: {fix}")
    python = venv / "bin" / "python"
    if python.is_file():
        result = check_folder(folder, [Reader("kit", sys.executable), Reader("opencompass", str(python))])
        lines = result["disagreements"]["opencompass"]
        if lines:
            raise UserError(f"OpenCompass's venv reads {folder} differently from the kit: {'; '.join(lines)}. "
                            f"Try: {fix}, then scripts/check_model.py {folder}")


def _checked(url: str, dest: Path, ledger: Path) -> Path:
    """Download with the kit's checksum, or the one this machine recorded the first time."""
    import json

    from qwen_kit.fetch import download, sha256_of

    known = json.loads(ledger.read_text(encoding="utf-8")) if ledger.is_file() else {}
    expected = SHA256.get(url) or known.get(url)
    path = download(url, dest, sha256=expected)
    if expected is None:
        known[url] = sha256_of(path)
        ledger.write_text(json.dumps(known, indent=1, sort_keys=True), encoding="utf-8")
        print(f"qwen_kit: no checksum for {url} in the kit yet; recorded sha256 {known[url]} in {ledger} "
              "(later runs are checked against it)", file=sys.stderr)
    return path


def fetch_data(dest: str | Path, dry_run: bool = False) -> Path:
    """Download and unpack the six datasets and the contamination annotations into ``dest/data``
    (run once on a machine with internet; then copy ``dest`` to offline machines). HTTPS,
    resumable, checksummed; archives are unpacked only if no member escapes ``dest/data``."""
    from qwen_kit.fetch import safe_extract

    data = Path(dest).expanduser() / "data"
    data.mkdir(parents=True, exist_ok=True)
    ledger = data / "checksums.json"
    for url, what in DOWNLOADS:
        print(f"{url} -> {data} ({what})", file=sys.stderr)
        if dry_run:
            continue
        archive = _checked(url, data / Path(url).name, ledger)
        core = "core" in archive.name

        def keep(member: str, core: bool = core) -> str | None:
            if core and "winogrande" not in member:
                return None
            return member.split("data/", 1)[1] if member.startswith("data/") else member

        safe_extract(archive, data, keep)
    for url, target in ANNOTATIONS:
        print(f"{url} -> {data / target}", file=sys.stderr)
        if not dry_run:
            _checked(url, data / target, ledger)
    return data
