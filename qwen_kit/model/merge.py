"""Merging a LoRA adapter into its base model, giving a plain Hugging Face model folder."""

from __future__ import annotations

import sys
from pathlib import Path

from qwen_kit.errors import UserError
from qwen_kit.model.portable import save_model


def merge_adapter(adapter: str, out: str, base: str | None = None, dtype: str = "float32") -> Path:
    """Load ``base`` (default: the adapter's own base model) with ``adapter``, fold the
    LoRA weights into the base weights and save the result to ``out``.

    Raises:
        UserError: missing adapter, wrong base, or ``out`` already holding a model.
    """
    from qwen_kit.model import LoadOptions, load_model

    target = Path(out).expanduser()
    if (target / "config.json").exists():
        raise UserError(f"{target} already holds a model; choose another --out or delete it first")
    adapter_dir = Path(adapter).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir} has no adapter_config.json; pass the folder a LoRA run saved")
    loaded = load_model(base or str(adapter_dir), LoadOptions(adapter=str(adapter_dir), dtype=dtype, device="cpu"))
    merged = loaded.model.merge_and_unload()
    save_model(merged, target, loaded.tokenizer)
    print(f"merged {adapter_dir} into {loaded.ref.path}; saved to {target}", file=sys.stderr)
    return target
