"""``make doctor``: what this machine has, and short self-checks of the paths training and chat
take on it. The JSON report is meant to be attached to a bug report.

On a GPU the checks use a random model shaped like Qwen2.5-0.5B (896 wide, 14 heads of 64,
2 KV heads, 24 layers, RoPE 1e6); on the CPU tiny shapes (128 wide, 2 layers) so it ends in
well under two minutes. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import platform as pyplatform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

PACKAGES = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "flash-attn", "liger-kernel", "deepspeed",
            "vllm", "datasets", "tokenizers"]


@dataclass
class Check:
    name: str
    status: str  # ok, failed, skipped
    detail: str
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment() -> dict[str, Any]:
    import torch

    from platforms import current_platform

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
    plat = current_platform()
    return {
        "python": sys.version.split()[0], "os": pyplatform.platform(), "cpu_cores": os.cpu_count(),
        "torch_cuda": torch.version.cuda, "driver": _driver(), "gpus": gpus,
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": {"name": plat.name, "describe": plat.describe(), "output": str(plat.output_dir()),
                     "cache": str(plat.cache_dir()), "models": [str(p) for p in plat.model_dirs()]},
    }


def _timed(name: str, fn: Callable[[], Check]) -> Check:
    started = time.perf_counter()
    try:
        check = fn()
    except Exception as err:  # a failed check is a finding, not a crash of the doctor
        check = Check(name, "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
    check.seconds = round(time.perf_counter() - started, 2)
    return check


def _shape(on_gpu: bool) -> dict[str, int]:
    if on_gpu:  # Qwen2.5-0.5B
        return {"hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2, "num_hidden_layers": 24,
                "intermediate_size": 4864}
    return {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2,
            "intermediate_size": 384}


def _random_model(on_gpu: bool, attn: str, dtype: Any, vocab: int = 1280):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    from qwen_kit.testing.tiny import QWEN25_05B

    cfg = Qwen2Config(vocab_size=vocab, use_cache=False, **QWEN25_05B, **_shape(on_gpu))
    cfg._attn_implementation = attn
    model = Qwen2ForCausalLM(cfg).to(dtype)
    return model.to("cuda" if on_gpu else "cpu")


def _batches(vocab: int, on_gpu: bool):
    """The same three examples as one padded batch and as one packed row."""
    import torch

    g = torch.Generator().manual_seed(1)
    lengths = [96, 57, 23] if not on_gpu else [512, 300, 77]
    examples = [torch.randint(10, vocab, (n,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, x in enumerate(examples):
        ids[r, : len(x)], mask[r, : len(x)], labels[r, 1: len(x)] = x, 1, x[1:]  # first token unscored
    packed_labels = torch.cat([torch.cat([torch.tensor([-100]), x[1:]]) for x in examples])[None]
    packed = {"input_ids": torch.cat(examples)[None], "labels": packed_labels,
              "position_ids": torch.cat([torch.arange(n) for n in lengths])[None]}
    padded = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    device = "cuda" if on_gpu else "cpu"
    move = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    return move(padded), move(packed)


def _train_steps(model, batch, steps: int = 3) -> list[float]:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


def check_attention(on_gpu: bool, capability: tuple[int, int] | None) -> Check:
    """A few training steps with each available attention kernel from the same start: the
    losses agree; and packed rows give the padded batch's loss."""
    import torch

    from qwen_kit.model.precision import flash_attn_installed

    dtype = torch.bfloat16 if on_gpu and capability and capability >= (8, 0) else (
        torch.float16 if on_gpu else torch.float32)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    backends = ["sdpa", "eager"] + (["flash_attention_2"] if on_gpu and capability and capability >= (8, 0)
                                   and flash_attn_installed() else [])
    padded, packed = _batches(1280, on_gpu)
    losses = {b: _train_steps(_random_model(on_gpu, b, dtype), padded) for b in backends}
    ref = losses["sdpa"]
    worst = max(abs(a - r) / max(abs(r), 1e-6) for b in backends for a, r in zip(losses[b], ref))
    packed_backend = "flash_attention_2" if "flash_attention_2" in backends else "sdpa"
    model = _random_model(on_gpu, packed_backend, dtype)
    with torch.no_grad():
        l_pad, l_pack = float(model(**padded).loss), float(model(**packed).loss)
    gap = abs(l_pad - l_pack) / abs(l_pad)
    ok = worst <= tol and gap <= tol
    return Check("attention kernels", "ok" if ok else "failed",
                 f"{', '.join(backends)} ({str(dtype).replace('torch.', '')}): worst relative loss gap {worst:.1e} over 3 "
                 f"steps; packed vs padded ({packed_backend}) {gap:.1e}; tolerance {tol:.0e}",
                 figures={"losses": losses, "packed_vs_padded": gap})


def check_4bit(on_gpu: bool, folder: Path) -> Check:
    from qwen_kit.model import LoadOptions, load_model

    loaded = load_model(str(folder), LoadOptions(load_in_4bit=True, device="cuda" if on_gpu else "cpu"), quiet=True)
    layers = sum(type(m).__name__ == "Linear4bit" for m in loaded.model.modules())
    ids = loaded.tokenizer("hello", return_tensors="pt").to(loaded.model.device)
    out = loaded.model.generate(**ids, max_new_tokens=5, do_sample=False, eos_token_id=None,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    new = out.shape[1] - ids["input_ids"].shape[1]
    return Check("4-bit load and generate", "ok" if layers and new == 5 else "failed",
                 f"{layers} Linear4bit layers (nf4), {new} tokens generated")


def check_fp16(on_gpu: bool, folder: Path) -> Check:
    if not on_gpu:
        return Check("fp16 start-up check", "skipped", "needs a GPU (fp16 is a GPU dtype here)")
    from qwen_kit.model import LoadOptions, load_model

    loaded = load_model(str(folder), LoadOptions(dtype="float16", device="cuda"), quiet=True)
    return Check("fp16 start-up check", "ok", f"kept {loaded.precision.dtype} with "
                 f"{loaded.precision.attn_implementation} attention (checked for NaN logits and '!!!' replies)")


def check_training(on_gpu: bool, folder: Path, work: Path, gpus: int) -> list[Check]:
    """A short run_sft through the user's path: real tokens/s and MFU; then 2-process DDP."""
    from qwen_kit.train.config import TrainConfig
    from qwen_kit.train.sft import run_sft

    rows = [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(str(k) for k in range(i % 40 + 3))}
            for i in range(64)]
    data = work / "rows.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    summary = run_sft(TrainConfig(model=str(folder), data=str(data), output_dir=str(work / "run"), max_steps=6,
                                  per_device_batch=8, max_len=256, eval_share=0.0, save_steps=1000, logging_steps=3,
                                  warmup_ratio=0.0, learning_rate=1e-4, overwrite=True))
    figures = {k: summary[k] for k in ("real_tokens_per_s", "padding_efficiency", "mfu", "peak_tflops", "attention",
                                        "packing")}
    mfu = f", MFU {summary['mfu']:.1%}" if summary["mfu"] is not None else " (MFU: GPU only)"
    checks = [Check("training throughput", "ok", f"{summary['real_tokens_per_s']:.0f} real tokens/s, padding "
                    f"efficiency {summary['padding_efficiency']:.3f}{mfu}; attention {summary['attention']}",
                    figures=figures)]
    if gpus < 2:
        checks.append(Check("2-process DDP", "skipped", f"needs 2 or more GPUs ({gpus} here)"))
        return checks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve().parents[1] / "scripts" / "sft.py"), "--model", str(folder), "--data", str(data),
           "--output-dir", str(work / "ddp"), "--max-steps", "3", "--per-device-batch", "4", "--max-len", "256",
           "--eval-share", "0", "--overwrite"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    ok = res.returncode == 0 and (work / "ddp" / "run_summary.json").is_file()
    checks.append(Check("2-process DDP", "ok" if ok else "failed",
                        "torchrun with 2 processes trained 3 steps" if ok else res.stderr.strip()[-300:]))
    return checks


def check_batching(folder: Path) -> Check:
    """The API server's continuous batcher on this hardware: requests generated together give
    the tokens each gets alone. Any difference is a failure (a wrong cache, mask or position):
    the model runs in float32, so rounding cannot flip a sampled token."""
    import threading

    from qwen_kit.model import LoadOptions, load_model
    from qwen_kit.generation.sampling import GenerationSettings
    from qwen_kit.generation.batching import ContinuousBatcher, Finished

    loaded = load_model(str(folder), LoadOptions(dtype="float32"), quiet=True)
    tok = loaded.tokenizer
    prompts = [tok(f"<|im_start|>user\nQuestion {i}: {'why ' * i}<|im_end|>\n<|im_start|>assistant\n",
                   add_special_tokens=False)["input_ids"] for i in range(4)]
    batcher = ContinuousBatcher(loaded.model, tok, [], max_batch=4)
    try:
        def tokens(req):
            return [t for t in req.tokens(timeout=120) if not isinstance(t, Finished)]

        # seeded sampling at temperature 1: a random model's greedy reply is one token repeated,
        # sampled replies differ from token to token, so a wrong cache or mask shows
        def sampling(i):
            return GenerationSettings(max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                                      repetition_penalty=1.0, seed=i)

        alone = [tokens(batcher.submit(p, sampling(i))) for i, p in enumerate(prompts)]
        requests, together = [], [None] * len(prompts)
        for i, p in enumerate(prompts):
            requests.append(batcher.submit(p, sampling(i)))
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, tokens(requests[i])))
                   for i in range(len(prompts))]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        batcher.close()
    same = sum(a == b for a, b in zip(alone, together))
    differ = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    detail = (f"{same}/{len(prompts)} batched replies (seeded sampling) equal the reply alone "
              f"(largest batch {batcher.largest_batch}, {loaded.precision.dtype})")
    if differ:
        detail += f"; request {differ[0]} alone {alone[differ[0]]}, batched {together[differ[0]]}"
    return Check("continuous batching", "ok" if not differ else "failed", detail,
                 figures={"same": same, "requests": len(prompts), "largest_batch": batcher.largest_batch})


def check_vllm(on_gpu: bool, folder: Path | None = None) -> Check:
    if _version("vllm") is None:
        return Check("vLLM", "skipped", "vllm is not installed")
    if not on_gpu:
        return Check("vLLM", "skipped", "vllm is installed, but needs a GPU")
    import threading

    import torch

    from qwen_kit.chat.engine import GenerationSettings, TurnStats
    from qwen_kit.model.load import pick_device
    from qwen_kit.generation.vllm import VLLMBackend, engine_args

    _, capability = pick_device("cuda")
    args = engine_args(str(folder), capability=capability, gpus=torch.cuda.device_count(), max_context=512,
                       max_batch=4, gpu_memory_utilization=0.3)
    pieces: list[str] = []
    stats = TurnStats()
    reason = VLLMBackend(args).generate("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", [],
                                        GenerationSettings(max_new_tokens=8, greedy=True, ignore_eos=True), [],
                                        threading.Event(), pieces.append, stats)
    return Check("vLLM", "ok" if stats.new_tokens == 8 else "failed",
                 f"vllm {_version('vllm')}: {args['dtype']}, {stats.new_tokens} tokens generated ({reason})")


def _self_checks(work: Path, on_gpu: bool, capability: tuple[int, int] | None, attn: str) -> list[Check]:
    """Every check after the first, with its models and runs under ``work``."""
    import torch

    from qwen_kit.testing import build_tiny_qwen

    checks: list[Check] = []
    folder = build_tiny_qwen(work / "tiny")
    checks.append(_timed("attention kernels", lambda: check_attention(on_gpu, capability)))
    checks.append(_timed("4-bit load and generate", lambda: check_4bit(on_gpu, folder)))
    checks.append(_timed("fp16 start-up check", lambda: check_fp16(on_gpu, folder)))
    gpus = torch.cuda.device_count() if on_gpu else 0
    train_folder = folder
    if on_gpu:  # a model of Qwen2.5-0.5B's shape, so tokens/s and MFU mean something
        from transformers import AutoTokenizer

        from qwen_kit.model.portable import save_model

        train_folder = save_model(_random_model(True, attn, torch.float32, vocab=1280).cpu(), work / "q05",
                                  AutoTokenizer.from_pretrained(folder))
    t0 = time.perf_counter()
    try:
        trained = check_training(on_gpu, train_folder, work, gpus)
    except Exception as err:  # noqa: BLE001
        trained = [Check("training throughput", "failed", f"{type(err).__name__}: {str(err)[:300]}")]
    trained[0].seconds = round(time.perf_counter() - t0, 2)
    checks += trained
    checks.append(_timed("continuous batching", lambda: check_batching(folder)))
    checks.append(_timed("vLLM", lambda: check_vllm(on_gpu, folder)))
    return checks


def run_doctor(report_path: str | Path = "doctor_report.json") -> dict[str, Any]:
    """Collect the environment, run the self-checks, print a table, write the JSON report."""
    from qwen_kit.model.load import pick_device
    from qwen_kit.model.precision import choose_attention, choose_precision, flash_attn_installed

    started = time.perf_counter()
    env = environment()
    device, capability = pick_device("auto")
    on_gpu = device.startswith("cuda")
    attn, why = choose_attention("auto", device, capability, flash_attn_installed())
    precision = choose_precision(device, capability, attn_implementation=attn)
    checks = [Check("dtype and attention", "ok", f"{device}: {precision.dtype}, {attn} ({why})")]
    # Models, a run with its optimizer checkpoint and a DDP run: several GB on a GPU, and AutoDL's
    # system disk is small. Deleted however the checks end.
    work = Path(tempfile.mkdtemp(prefix="qwen-kit-doctor-"))
    cache_was_set = "QWEN_KIT_CACHE" in os.environ
    os.environ.setdefault("QWEN_KIT_CACHE", str(work / "cache"))
    try:
        checks += _self_checks(work, on_gpu, capability, attn)
    finally:
        if not cache_was_set:
            os.environ.pop("QWEN_KIT_CACHE", None)
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            print(f"qwen_kit: could not delete the doctor's temporary folder {work}; delete it by hand",
                  file=sys.stderr)
    report = {"environment": env, "checks": [asdict(c) for c in checks],
              "seconds": round(time.perf_counter() - started, 1)}
    Path(report_path).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    _print(env, checks, report_path, report["seconds"])
    return report


def _print(env: dict[str, Any], checks: list[Check], path: str | Path, seconds: float) -> None:
    gpus = "; ".join(f"{g['name']} (cc {g['capability']}, {g['memory_gib']} GiB)" for g in env["gpus"]) or "none"
    print(f"python {env['python']} on {env['os']}, {env['cpu_cores']} CPU cores")
    print(f"torch {env['packages']['torch']} (CUDA {env['torch_cuda'] or '-'}, driver {env['driver'] or '-'}); GPUs: {gpus}")
    print("packages: " + ", ".join(f"{k} {v or '-'}" for k, v in env["packages"].items() if k != "torch"))
    print(f"platform: {env['platform']['describe']}; output {env['platform']['output']}")
    print()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status.upper():8} {c.name:{width}}  {c.detail}  [{c.seconds:.1f} s]")
    failed = sum(c.status == "failed" for c in checks)
    print(f"\n{len(checks)} checks, {failed} failed, in {seconds:.0f} s; report: {path}")
