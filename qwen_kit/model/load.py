"""The one model loader: resolve, pick precision, load weights and tokenizer, apply an adapter."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from platforms import Platform
from qwen_kit.errors import UserError
from qwen_kit.model.precision import (Precision, choose_attention, choose_precision, estimate_params,
                                      flash_attn_installed)
from qwen_kit.model.resolve import ModelRef, resolve_model


@dataclass
class LoadOptions:
    """How to load a model. Every field has a command-line flag of the same name."""

    adapter: str | None = None
    load_in_4bit: bool | None = None  # None: the platform's default (Kaggle: 4-bit from 1.5B on a GPU)
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    attn: str = "sdpa"  # or auto, flash_attention_2, eager (choose_attention)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    ref: ModelRef
    precision: Precision
    adapter: Path | None = None
    eos_token_ids: list[int] = field(default_factory=list)


def chatml_template() -> str:
    """Qwen2.5's ChatML chat template, shipped with the kit for tokenizers that lack one."""
    return resources.files("qwen_kit.assets").joinpath("qwen2.5_chat_template.jinja").read_text(encoding="utf-8")


def pick_device(device: str = "auto") -> tuple[str, tuple[int, int] | None]:
    import torch

    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
        return device, torch.cuda.get_device_capability(torch.device(device))
    return device, None


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a reply: the generation config's (Qwen: ``<|im_end|>`` and
    ``<|endoftext|>``), the tokenizer's, and ``<|im_end|>`` for ChatML base models whose
    generation config only knows ``<|endoftext|>``."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        ids += value if isinstance(value, (list, tuple)) else [value]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end >= 0:
        ids.append(im_end)
    return list(dict.fromkeys(int(i) for i in ids))


def _check_config(ref: ModelRef, trust_remote_code: bool) -> dict[str, Any]:
    try:
        config = json.loads((ref.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{ref.path / 'config.json'} cannot be read as JSON ({err}); re-download the model") from None
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"{ref.path} needs its own Python code to load (auto_map in config.json); "
                        "read that code, then pass --trust-remote-code if you trust it")
    return config


def warn_if_not_portable(folder: Path) -> None:
    """One line on stderr when transformers 4 (OpenCompass, older tools) would read ``folder``
    as a different model than this loader does (a fine-tune saved before the kit wrote portable
    folders, or a folder saved by transformers 5 directly)."""
    from qwen_kit.model.portable import REPAIR_HINT, portability_problems

    try:
        problems = portability_problems(folder)
    except ValueError:
        return  # malformed JSON: the load itself reports it
    if problems:
        print(f"qwen_kit: warning: transformers 4 (OpenCompass, older tools) would read {folder} differently: "
              f"{problems[0]}{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}; repair it with: "
              + REPAIR_HINT.format(folder=folder), file=sys.stderr)


def generation_problem(model: Any, tokenizer: Any, new_tokens: int = 4) -> str | None:
    """Generate a few tokens and report the known half-precision failure of Qwen2 (NaN or
    infinite logits, or a reply of nothing but "!"); ``None`` when the model is healthy."""
    import torch

    messages = [{"role": "user", "content": "Say hello."}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a tokenizer without a template: any text will do
        text = "Hello"
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id or 0)
    if any(not torch.isfinite(s).all() for s in out.scores):
        return "NaN or infinite logits"
    reply = tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    if reply.strip() and set(reply.strip()) <= {"!"}:
        return f"a reply of only '!' ({reply.strip()!r})"
    return None


def apply_adapter(model: Any, adapter: Path, base: Path) -> Any:
    """Load a PEFT LoRA adapter onto ``model``; a mismatched adapter is a :class:`UserError`."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"adapter folder {adapter} has no adapter_config.json; pass the folder the LoRA run saved")
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        trained_on = "unknown"
        try:
            trained_on = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        except Exception:
            pass
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"adapter {adapter} does not fit base model {base} (it was trained on {trained_on}): {first}. "
                        "Load it with the base model it was trained from") from None


def load_model(name: str, options: LoadOptions | None = None, platform: Platform | None = None,
               quiet: bool = False) -> LoadedModel:
    """Resolve ``name`` and load model + tokenizer ready for generation.

    Raises:
        UserError: the model cannot be found, is not a model folder, needs remote code
            that was not allowed, or the adapter does not fit it.
    """
    import torch

    from platforms import current_platform

    options = options or LoadOptions()
    platform = platform or current_platform()
    ref = resolve_model(name, platform)
    adapter = Path(options.adapter).expanduser() if options.adapter else ref.adapter
    if adapter is not None and not adapter.exists():
        raise UserError(f"adapter folder {adapter} does not exist")
    config = _check_config(ref, options.trust_remote_code)
    if not quiet and ref.source != "demo":
        warn_if_not_portable(ref.path)

    device, capability = pick_device(options.device)
    attn, _ = choose_attention(options.attn, device, capability, flash_attn_installed())
    precision = choose_precision(device, capability, options.load_in_4bit, options.dtype,
                                 prefer_4bit=platform.prefers_4bit(estimate_params(config)), attn_implementation=attn)
    loaded = _load(ref, precision, options, adapter, quiet)
    if precision.dtype != "float16":
        return loaded
    # Qwen2 in fp16 has produced NaN logits ("!!!!" replies) on T4s: check, then fall back
    tried = []
    for fallback in (replace(precision, attn_implementation="eager"), replace(precision, dtype="float32")):
        problem = generation_problem(loaded.model, loaded.tokenizer)
        if problem is None:
            return loaded
        tried.append(f"{loaded.precision.dtype}/{loaded.precision.attn_implementation}: {problem}")
        print(f"qwen_kit: the model gave {problem} with {loaded.precision.dtype} and "
              f"{loaded.precision.attn_implementation} attention; retrying with {fallback.dtype} and "
              f"{fallback.attn_implementation} attention", file=sys.stderr)
        del loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        loaded = _load(ref, fallback, options, adapter, quiet)
    problem = generation_problem(loaded.model, loaded.tokenizer)
    if problem is not None:
        tried.append(f"float32/{loaded.precision.attn_implementation}: {problem}")
        raise UserError(f"{ref.path} does not generate properly on {device}: " + "; ".join(tried)
                        + ". Check the weights (re-download) or try another --device")
    return loaded


def _load(ref: ModelRef, precision: Precision, options: LoadOptions, adapter: Path | None, quiet: bool) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    device = precision.device
    dtype = getattr(torch, precision.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": options.trust_remote_code,
                              "attn_implementation": precision.attn_implementation,
                              "device_map": {"": device}}
    if precision.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    if not quiet:
        print(f"loading {ref.name} from {ref.path} ({precision.dtype} on {device}"
              f"{', 4-bit nf4' if precision.load_in_4bit else ''})", file=sys.stderr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=options.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load the model in {ref.path}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "chat_template", None):
        if not quiet:
            print(f"{ref.path} has no chat template; using Qwen's ChatML template", file=sys.stderr)
        tokenizer.chat_template = chatml_template()
    if adapter is not None:
        model = apply_adapter(model, adapter.resolve(), ref.path)
    model.eval()
    return LoadedModel(model, tokenizer, ref, precision, adapter, eos_token_ids(model, tokenizer))
