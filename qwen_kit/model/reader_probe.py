"""What one transformers installation makes of a saved model folder, as JSON on stdout.

This file is run by path under *other* Python environments (transformers 4 in ``.venv-tf4`` or
OpenCompass's ``.venv-eval``, vLLM's), so it imports nothing from qwen_kit: only the standard
library, torch and transformers (and vLLM's config reader when asked for it).

    python reader_probe.py FOLDER [--logits] [--reader transformers|vllm]

It reports the values a reader really *uses*, not the raw JSON: the RoPE base recovered from the
rotary embedding's frequencies, which layers use a sliding window, whether the output layer is
tied to the embeddings, the end-of-reply ids, how the tokenizer splits a fixed text, and with
``--logits`` the logits of a fixed prompt. ``qwen_kit.model.readers`` compares two such reports.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings

PROBE_TEXT = "<|im_start|>user\nWhen does the library close? 图书馆几点关门？<|im_end|>\n<|im_start|>assistant\n"


def _ids(value):
    if value is None:
        return []
    return sorted({int(v) for v in (value if isinstance(value, (list, tuple)) else [value])})


def _rope_base(inv_freq) -> float | None:
    """inv_freq[i] = base ** (-2i / d) with d = 2 * len(inv_freq): the base from entry 1.
    (Scaled RoPE types change the frequencies too; the report then also differs, as it should.)"""
    if len(inv_freq) < 2 or float(inv_freq[1]) <= 0:
        return None
    return float(f"{float(inv_freq[1]) ** (-len(inv_freq)):.6g}")


def _config_report(config) -> dict:
    text = getattr(config, "get_text_config", lambda: config)()
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // text.num_attention_heads)
    use_sw = bool(getattr(text, "use_sliding_window", False))
    layer_types = getattr(text, "layer_types", None)
    if layer_types is None:  # transformers before layer_types: the Qwen2 rule
        mwl = getattr(text, "max_window_layers", text.num_hidden_layers)
        layer_types = ["sliding_attention" if use_sw and getattr(text, "sliding_window", None) and i >= mwl
                       else "full_attention" for i in range(text.num_hidden_layers)]
    sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return {
        "model_type": config.model_type,
        "architectures": list(getattr(config, "architectures", None) or []),
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": getattr(text, "intermediate_size", None),
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": getattr(text, "num_key_value_heads", None),
        "head_dim": head_dim,
        "hidden_act": getattr(text, "hidden_act", None),
        "rms_norm_eps": getattr(text, "rms_norm_eps", None),
        "max_position_embeddings": getattr(text, "max_position_embeddings", None),
        "rope_type": (rope.get("rope_type") or rope.get("type") or "default") if isinstance(rope, dict) else "default",
        "rope_factor": rope.get("factor") if isinstance(rope, dict) else None,
        "sliding_window_layers": sliding,
        "sliding_window": getattr(text, "sliding_window", None) if sliding else None,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", getattr(text, "tie_word_embeddings", False))),
        "bos_token_id": getattr(config, "bos_token_id", None),
        "eos_token_ids": _ids(getattr(config, "eos_token_id", None)),
        "pad_token_id": getattr(config, "pad_token_id", None),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
    }


def _rotary(config, model):
    """The rotary embedding the reader builds: taken from the loaded model, or built from the
    config alone (cheap: no weights are read)."""
    if model is not None:
        return next((m for m in model.modules() if hasattr(m, "inv_freq") and "Rotary" in type(m).__name__), None)
    import importlib

    kind = config.model_type
    try:
        module = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
        cls = next(getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding") and "Rotary" in n)
        return cls(config=getattr(config, "get_text_config", lambda: config)())
    except Exception:  # an architecture without RoPE, or an old signature
        return None


def _tokenizer_report(folder: str) -> tuple[dict | None, str | None]:
    from pathlib import Path

    from transformers import AutoTokenizer

    if not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None, "no tokenizer files"
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # a tokenizer this reader cannot load is itself the finding
        return None, f"tokenizer does not load: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    template = getattr(tok, "chat_template", None)
    return {"eos_token": tok.eos_token, "pad_token": tok.pad_token, "length": len(tok),
            "probe_ids": tok(PROBE_TEXT, add_special_tokens=False)["input_ids"],
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()[:16] if template else None}, None


def probe(folder: str, logits: bool = False) -> dict:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    report: dict = {"reader": f"transformers {transformers.__version__}", "problems": []}
    config = AutoConfig.from_pretrained(folder)
    report["config"] = _config_report(config)
    try:
        gen = GenerationConfig.from_pretrained(folder)
        # A None means "unset" to transformers 5, which applies these defaults at generate time,
        # but "off" to transformers 4 (no top-k; and it samples unless do_sample is exactly False).
        unset = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
        if int(transformers.__version__.split(".")[0]) < 5:
            unset["top_k"] = 0
        mode = gen.get_generation_mode()
        report["generation"] = {"eos_token_ids": _ids(gen.eos_token_id), "pad_token_id": gen.pad_token_id,
                                "mode": getattr(mode, "value", str(mode)),
                                **{k: d if getattr(gen, k, None) is None else getattr(gen, k)
                                   for k, d in unset.items()}}
    except OSError:
        report["generation"] = None
        report["problems"].append("no generation_config.json")
    report["tokenizer"], problem = _tokenizer_report(folder)
    if problem:
        report["problems"].append(problem)
    model = None
    if logits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # float32 for comparable logits; the keyword was renamed in transformers 4.56
            new = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)
            model = AutoModelForCausalLM.from_pretrained(folder, **{"dtype" if new else "torch_dtype": torch.float32})
        model.eval()
    rotary = _rotary(config, model)
    report["effective"] = {
        "rope_base": _rope_base(rotary.inv_freq) if rotary is not None else None,
        "rope_attention_scaling": float(getattr(rotary, "attention_scaling", 1.0)) if rotary is not None else None,
    }
    if model is not None:
        report["effective"]["lm_head_tied"] = (model.get_output_embeddings().weight.data_ptr()
                                               == model.get_input_embeddings().weight.data_ptr())
        ids = report["tokenizer"]["probe_ids"] if report.get("tokenizer") else list(range(16))
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids])).logits[0].float()
        # a real vocabulary (151,936 for Qwen2.5) would make megabytes of JSON: every
        # position's argmax, and a fixed spread of 512 columns for the numeric comparison
        stride = max(1, out.shape[1] // 512)
        report["argmax"] = out.argmax(-1).tolist()
        report["logits_stride"] = stride
        report["logits"] = out[:, ::stride].tolist()
    return report


def probe_vllm(folder: str) -> dict:
    """vLLM's own config reader (no weights, no GPU needed)."""
    from vllm.transformers_utils.config import get_config  # type: ignore
    import vllm  # type: ignore

    config = get_config(folder, trust_remote_code=False)
    return {"reader": f"vllm {vllm.__version__}", "problems": [], "config": _config_report(config)}


def main(argv: list[str]) -> int:
    folder = argv[0]
    reader = argv[argv.index("--reader") + 1] if "--reader" in argv else "transformers"
    report = probe_vllm(folder) if reader == "vllm" else probe(folder, logits="--logits" in argv)
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
