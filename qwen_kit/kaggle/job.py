"""What a pushed Kaggle kernel runs (see kernel_template.py): find the inputs under
/kaggle/input, run one job of the kit unattended, write the results to /kaggle/working.

Jobs: chat, rag, memory and persona replay a scripted conversation through the same chat as
``scripts/chat.py`` (transcript.jsonl); eval scores the memory and persona sets that ship with
the kit; lora fine-tunes with configs/lora_qwen2.5_1.5b.yaml on the kit's sample data or an
attached dataset.
"""

from __future__ import annotations

import io
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from platforms.kaggle import KagglePlatform
from qwen_kit.privacy import redact


class _Tee(io.TextIOBase):
    """Writes to a file and to the kernel's log."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def _find_inside(root: Path | None, marker: str) -> Path | None:
    if root is None:
        return None
    hits = sorted(p.parent for p in root.rglob(marker))
    return hits[0] if hits else None


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lora_command(recipe: str, overrides: dict[str, str], kit: Path, gpus: int) -> list[str] | None:
    """The torchrun command for the lora job on ``gpus`` GPUs, or None for one process."""
    if gpus < 2:
        return None
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            str(kit / "scripts" / "sft.py"), "--config", recipe, *flags]


def run_job(config: dict[str, Any], kit: str) -> int:
    platform = KagglePlatform()
    working = platform.working
    working.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"job": config["job"], "model": config["model"], "kit": kit,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": []}
    started = time.time()
    try:
        code = _run(config, Path(kit), platform, working, summary)
        summary["status"] = "ok" if code == 0 else f"exit code {code}"
    except BaseException as err:  # noqa: BLE001 - the summary must say what happened
        summary["status"] = redact(f"failed: {type(err).__name__}: {err}")
        print(redact(traceback.format_exc()), file=sys.stderr)  # the kernel's log is published with it
        code = 2 if type(err).__name__ == "UserError" else 1
    summary["seconds"] = round(time.time() - started, 1)
    report = redact(json.dumps(summary, ensure_ascii=False, indent=1))
    (working / "qwen_kit_job.json").write_text(report, encoding="utf-8")
    print(report)
    return code


def _run(config: dict[str, Any], kit: Path, platform: KagglePlatform, working: Path, summary: dict[str, Any]) -> int:
    from qwen_kit.errors import UserError

    job = config["job"]
    adapter_root = platform.find_dataset(config["adapter"]) if config.get("adapter") else None
    adapter = _find_inside(adapter_root, "adapter_config.json")
    if config.get("adapter") and adapter is None:
        raise UserError(f"adapter dataset {config['adapter']} is not attached or holds no adapter_config.json "
                        f"(looked under {platform.input_dir})")
    docs = platform.find_dataset(config["docs"]) if config.get("docs") else None
    if config.get("docs") and docs is None:
        raise UserError(f"dataset {config['docs']} is not attached (looked under {platform.input_dir})")
    summary.update({"adapter_path": str(adapter) if adapter else None, "docs_path": str(docs) if docs else None})

    if job in ("chat", "rag", "memory", "persona"):
        from qwen_kit.chat.pipeline import ChatConfig
        from qwen_kit.terminal import run_chat

        persona = None
        if job == "persona":
            persona = config.get("persona") or "data/personas/lighthouse_keeper.yaml"
            persona = str(docs / persona) if docs and (docs / persona).is_file() else str(kit / persona)
        cfg = ChatConfig(model=config["model"], adapter=str(adapter) if adapter else None, greedy=True,
                         max_new_tokens=int(config.get("max_new_tokens", 256)), jsonl=True,
                         load_in_4bit=config.get("load_in_4bit"),
                         rag=str(docs) if job == "rag" else None, memory=job == "memory",
                         memory_file=str(working / "chat_history.txt") if job == "memory" else None,
                         max_context=1024 if job == "memory" else None, persona=persona)
        lines = "\n".join(config.get("messages") or ["Hello!"]) + "\n"
        transcript = working / "transcript.jsonl"
        with open(transcript, "w", encoding="utf-8") as out:
            code = run_chat(cfg, stdin=io.BytesIO(lines.encode("utf-8")), stdout=_Tee(out, sys.stdout))
        summary["outputs"] += [str(transcript)] + ([str(working / "chat_history.txt")] if job == "memory" else [])
        return code

    if job == "eval":
        from qwen_kit.chat.evaluate import (eval_memory, eval_persona, read_dialogue, read_probes,
                                            write_table)
        from qwen_kit.chat.persona import load_persona
        from qwen_kit.model import LoadOptions, load_model
        from qwen_kit.retrieval.hybrid import Embedder

        loaded = load_model(config["model"], LoadOptions(adapter=str(adapter) if adapter else None,
                                                         load_in_4bit=config.get("load_in_4bit")))
        out = working / "eval"
        dialogue = read_dialogue(kit / "data" / "memory_dialogue.jsonl")
        mem = [eval_memory(dialogue, loaded, Embedder(), layout=layout) for layout in ("user", "system")]
        write_table(out, "memory_eval", f"Long-term memory, {config['model']}", [r.row() for r in mem],
                    {r.layout: r.details for r in mem})
        rows, details = [], {}
        for name in ("lighthouse_keeper", "teahouse_owner_zh"):
            persona = load_persona(kit / "data" / "personas" / f"{name}.yaml")
            probes = read_probes(kit / "data" / "personas" / f"{name}_probes.jsonl")
            for layout in ("second", "fields"):
                r = eval_persona(persona, probes, loaded, layout)
                rows.append({"persona": name, **r.row()})
                details[f"{name}/{layout}"] = r.details
        write_table(out, "persona_eval", f"Personas, {config['model']}", rows, details)
        summary["outputs"] += [str(out / "memory_eval.md"), str(out / "persona_eval.md")]
        return 0

    if job == "lora":
        from qwen_kit.config import load_config
        from qwen_kit.train.config import TrainConfig
        from qwen_kit.train.sft import run_sft

        data = None
        if docs:  # the attached dataset's first training file
            files = sorted(p for p in docs.rglob("*") if p.suffix in (".json", ".jsonl", ".csv", ".parquet")
                           and p.name != "dataset-metadata.json")
            data = files[0] if files else None
        overrides = {"model": config["model"], "output_dir": str(working / "runs" / "lora"),
                     "data": str(data) if data else str(kit / "data" / "sample_alpaca.json")}
        if config.get("load_in_4bit"):
            overrides["finetune"] = "qlora"
        recipe = str(kit / "configs" / "lora_qwen2.5_1.5b.yaml")
        summary["outputs"].append(overrides["output_dir"])
        command = lora_command(recipe, overrides, kit, _gpu_count())
        if command:  # Kaggle's "GPU T4 x2": one process per GPU through torchrun
            summary["launch"] = " ".join(command)
            import subprocess

            return subprocess.call(command)
        run_sft(load_config(TrainConfig, recipe, overrides))
        return 0
    raise UserError(f"unknown job {job!r}")
