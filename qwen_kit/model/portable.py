"""Saving model folders that transformers 4 and 5, vLLM and OpenCompass all read as one model.

transformers 5 changed how a folder is written, and older readers do not complain, they guess:
- ``config.json``: the RoPE base lives only in ``rope_parameters``; transformers 4 reads the
  top-level ``rope_theta``, finds none and uses 10,000 (Qwen2.5 uses 1,000,000), so OpenCompass
  scored a different model. Scaled RoPE moved the same way (``rope_scaling``), and the dtype is
  written as ``dtype`` where transformers before 4.56 reads ``torch_dtype``.
- ``tokenizer_config.json``: ``tokenizer_class: TokenizersBackend`` and ``extra_special_tokens``
  as a list, neither of which transformers 4 can load; the chat template only in
  ``chat_template.jinja``, which transformers before 4.47 does not look for.
- ``generation_config.json``: a fine-tune of a base model keeps the base's end-of-text id only,
  so a ChatML reply never stops at ``<|im_end|>`` in vLLM or a plain ``generate()``. An explicit
  ``null`` for ``do_sample``, ``num_beams`` or ``top_k`` is unset to transformers 5 (greedy, one
  beam, top-k 50) but sampling / beam search / no top-k to transformers 4. A repair never adds or
  changes a sampling value: how a model decodes is not a portability question.

Every folder the kit writes goes through :func:`save_model` and :func:`save_tokenizer`;
:func:`make_folder_portable` repairs folders written before (``make portable MODEL=…``), and
:func:`portability_problems` says what an older reader would misread, without changing anything.
``qwen_kit.model.readers`` checks the same thing by asking each reader (``scripts/check_model.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen2.5-Instruct's recommended sampling (its generation_config.json), also the chat's defaults
QWEN25_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
CHATML_END = "<|im_end|>"
REPAIR_HINT = "make portable MODEL={folder}"


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _config_fixes(config: dict[str, Any]) -> list[str]:
    """Add the fields older readers look for; returns what changed (``config`` is edited in place).
    Nested text configs (multimodal models) get the same treatment."""
    changes: list[str] = []
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        theta = rope["rope_theta"]
        if config.get("rope_theta") != theta:
            changes.append(f"rope_theta: {config.get('rope_theta')} -> {theta} (from rope_parameters)")
            config["rope_theta"] = theta
        kind = rope.get("rope_type", "default")
        scaling = None if kind == "default" else {**{k: v for k, v in rope.items() if k != "rope_theta"}, "type": kind}
        if config.get("rope_scaling", None) != scaling:
            changes.append(f"rope_scaling: {config.get('rope_scaling')} -> {scaling} (from rope_parameters)")
            config["rope_scaling"] = scaling
    if "dtype" in config and config.get("torch_dtype") != config["dtype"]:
        changes.append(f"torch_dtype: {config.get('torch_dtype')} -> {config['dtype']} (from dtype)")
        config["torch_dtype"] = config["dtype"]
    text = config.get("text_config")
    if isinstance(text, dict):
        changes += [f"text_config.{c}" for c in _config_fixes(text)]
    return changes


def _tokenizer_fixes(config: dict[str, Any], folder: Path) -> list[str]:
    changes: list[str] = []
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changes.append("tokenizer_class: TokenizersBackend -> PreTrainedTokenizerFast")
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = list(dict.fromkeys([*config.get("additional_special_tokens", []), *extra]))
        changes.append("extra_special_tokens (a list) -> additional_special_tokens")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and config.get("chat_template") != jinja.read_text(encoding="utf-8"):
        config["chat_template"] = jinja.read_text(encoding="utf-8")
        changes.append("chat_template copied into tokenizer_config.json (transformers < 4.47 reads it there)")
    return changes


# generation_config.json fields whose explicit null transformers 4 and 5 read differently
_NULL_MISREAD = {"do_sample": "sampling", "num_beams": "beam search", "top_k": "no top-k"}


def _generation_fixes(gen: dict[str, Any], end_ids: list[int]) -> list[str]:
    changes: list[str] = []
    current = gen.get("eos_token_id")
    current = [] if current is None else (list(current) if isinstance(current, list) else [current])
    wanted = list(dict.fromkeys([*end_ids, *current]))
    if end_ids and sorted(wanted) != sorted(current):
        gen["eos_token_id"] = wanted
        changes.append(f"generation eos_token_id: {current} -> {wanted}")
    # How the model decodes is its author's choice (Qwen2.5 base models ship greedy configs): no
    # sampling value is ever added or changed. Only an explicit null is dropped where the readers
    # disagree on it; transformers 5 reads it as unset (its default), transformers 4 as "off".
    for key in _NULL_MISREAD:
        if key in gen and gen[key] is None:
            del gen[key]
            changes.append(f"generation {key}: null removed (transformers 4 reads it as {_NULL_MISREAD[key]}, "
                           "transformers 5 as its default; both now read the default)")
    return changes


def _end_ids_from_tokenizer(folder: Path) -> list[int]:
    """The ids that end a ChatML reply, read from tokenizer.json without loading a tokenizer."""
    tok = _read(folder / "tokenizer.json")
    if not tok:
        return []
    added = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    return [added[t] for t in (CHATML_END, "<|endoftext|>") if t in added] if CHATML_END in added else []


def make_folder_portable(folder: str | Path, end_ids: list[int] | None = None, dry_run: bool = False,
                         generation: bool = True) -> list[str]:
    """Rewrite ``config.json``, ``tokenizer_config.json`` and (with ``generation``)
    ``generation_config.json`` in ``folder`` so every reader sees the same model. Returns one
    line per change (empty when there was nothing to do). Weights are never touched.

    Raises:
        ValueError: one of those files is not valid JSON.
    """
    folder = Path(folder)
    end_ids = _end_ids_from_tokenizer(folder) if end_ids is None else end_ids
    fixes = [("config.json", _config_fixes), ("tokenizer_config.json", lambda c: _tokenizer_fixes(c, folder))]
    if generation:
        fixes.append(("generation_config.json", lambda c: _generation_fixes(c, end_ids)))
    changes: list[str] = []
    for name, fix in fixes:
        data = _read(folder / name)
        if data is None:
            continue
        found = fix(data)
        if found and not dry_run:
            _write(folder / name, data)
        changes += [f"{name}: {c}" for c in found]
    return changes


def portability_problems(folder: str | Path) -> list[str]:
    """What transformers 4 (OpenCompass, older tools) would read differently from transformers 5
    in ``folder``; nothing is changed. Missing sampling defaults are not a misreading and are
    not reported."""
    return make_folder_portable(folder, dry_run=True, generation=False)


def make_tokenizer_portable(folder: str | Path) -> list[str]:
    path = Path(folder) / "tokenizer_config.json"
    data = _read(path)
    if data is None:
        return []
    changes = _tokenizer_fixes(data, Path(folder))
    if changes:
        _write(path, data)
    return changes


def save_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)``, then made loadable by transformers 4 too."""
    tokenizer.save_pretrained(str(folder))
    make_tokenizer_portable(folder)


def reply_end_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a reply: ``<|im_end|>`` first (ChatML), then the model's own."""
    from qwen_kit.model.load import eos_token_ids

    ids = eos_token_ids(model, tokenizer)
    im_end = tokenizer.convert_tokens_to_ids(CHATML_END)
    return sorted(ids, key=lambda i: i != im_end)


def save_model(model: Any, folder: str | Path, tokenizer: Any = None) -> Path:
    """``model.save_pretrained(folder)`` (and the tokenizer's), then made portable: the one way
    the kit writes a model folder (fine-tunes, merges, the demo conversion, fixtures)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    end_ids = reply_end_ids(model, tokenizer) if tokenizer is not None else None
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)
    make_folder_portable(folder, end_ids=end_ids)
    return folder


def repair_folders(folders: list[str], dry_run: bool = False) -> int:
    """``make portable``: mend each folder in place and print what changed. Returns the number
    of folders that needed a change.

    Raises:
        UserError: a path is not a model or adapter folder, or holds malformed JSON.
    """
    import sys

    from qwen_kit.errors import UserError

    mended = 0
    for name in folders:
        folder = Path(name).expanduser()
        if not any((folder / f).is_file() for f in ("config.json", "adapter_config.json", "tokenizer_config.json")):
            raise UserError(f"{folder}: not a model folder (no config.json, adapter_config.json or "
                            "tokenizer_config.json); pass the folder a run or a merge saved")
        try:
            changes = make_folder_portable(folder, dry_run=dry_run)
        except ValueError as err:
            raise UserError(f"{folder}: a JSON file there is malformed ({err}); restore it from the run's "
                            "checkpoint or re-save the model") from None
        verb = "would change" if dry_run else "changed"
        if changes:
            mended += 1
            print(f"{folder}: {verb} {len(changes)} field(s)", file=sys.stderr)
            for line in changes:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"{folder}: already portable, nothing to change", file=sys.stderr)
    return mended
