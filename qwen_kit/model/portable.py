"""Saving tokenizers that both transformers 5 (the kit) and transformers 4 (OpenCompass's venv,
most other tools) can load.

transformers 5 writes ``tokenizer_class: TokenizersBackend`` and ``extra_special_tokens`` as a
list; transformers 4 knows neither (it fails with "'list' object has no attribute 'keys'").
The class becomes ``PreTrainedTokenizerFast`` and the list ``additional_special_tokens``, which
both versions read the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def make_tokenizer_portable(folder: str | Path) -> None:
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = list(dict.fromkeys([*config.get("additional_special_tokens", []), *extra]))
        changed = True
    if changed:
        path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def save_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)``, then made loadable by transformers 4 too."""
    tokenizer.save_pretrained(str(folder))
    make_tokenizer_portable(folder)
