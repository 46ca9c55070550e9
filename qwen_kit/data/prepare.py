"""From a data source to token ids and labels: validated, batched, cached.

The result is cached under the platform's cache folder, keyed by the data's content, the
tokenizer and the render options, so a second run with the same inputs skips everything.
"""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen_kit.data.read import read_examples
from qwen_kit.data.render import (IGNORE, RenderOptions, TemplateRenderer, apply_system, labels_for_encoding,
                                  labels_from_offsets, render_text, target_spans)

CACHE_VERSION = 2


@dataclass
class TokenizedData:
    """Token ids and labels of every kept row, plus what happened to the others."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def _fingerprint(source: str, tokenizer: Any, opts: RenderOptions) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{json.dumps(asdict(opts), sort_keys=True)}".encode())
    from qwen_kit.data.read import locate_data

    path = locate_data(source)
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        h.update(f"hub:{source}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()[:24]


def _save(path: Path, data: TokenizedData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = data.lengths()
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=np.concatenate(data.input_ids) if len(data) else np.zeros(0, np.int32),
             labels=np.concatenate(data.labels) if len(data) else np.zeros(0, np.int32), lengths=lengths,
             stats=np.array(json.dumps(data.stats)))
    tmp.replace(path)


def _load(path: Path) -> TokenizedData:
    with np.load(path) as z:
        bounds = np.cumsum(z["lengths"])[:-1]
        return TokenizedData(np.split(z["ids"], bounds), np.split(z["labels"], bounds), json.loads(str(z["stats"])))


def prepare_data(source: str, tokenizer: Any, opts: RenderOptions, cache_dir: Path | None = None,
                 max_bad_share: float = 0.05, progress: bool = True, batch_size: int = 1000) -> TokenizedData:
    """Read, validate, render and tokenize ``source``; reuse the cache when nothing changed.

    Raises:
        UserError: unreadable source, too many bad rows, or no row left to train on.
    """
    from tqdm.auto import tqdm

    from qwen_kit.errors import UserError

    cache_file = cache_dir / f"{_fingerprint(source, tokenizer, opts)}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        data = _load(cache_file)
        data.stats["cached"] = True
        return data

    examples, report = read_examples(source, max_bad_share)
    if report.bad:
        print(report.summary(source), file=sys.stderr)
    no_system = opts.no_system_prompt
    renderer = TemplateRenderer(tokenizer)
    renderer.verify([apply_system(ex.messages, opts) for ex in examples[:8]])
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def render_chunk(chunk: list) -> tuple[list[str], list[list[tuple[int, int]]]]:
        texts, spans = [], []
        for ex in chunk:
            msgs = apply_system(ex.messages, opts)
            text = render_text(tokenizer, msgs, no_system, renderer=renderer)
            texts.append(text)
            spans.append(target_spans(tokenizer, msgs, text, no_system, renderer) if opts.loss == "response" else [])
        return texts, spans

    def encode(texts: list[str]) -> list:
        if backend is not None:  # the Rust tokenizer directly: parallel, and it releases the GIL
            return backend.encode_batch(texts, add_special_tokens=False)
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(enc["input_ids"], enc["offset_mapping"]))

    ids_out, labels_out = [], []
    truncated = dropped = 0
    bar = tqdm(total=len(examples), desc="tokenizing", disable=not progress, unit="row", mininterval=1)
    # Rendering (Python) of the next chunk overlaps tokenization (Rust, GIL released) of this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        chunks = [examples[lo: lo + batch_size] for lo in range(0, len(examples), batch_size)]
        pending = None
        for k in range(len(chunks) + 1):
            rendered = render_chunk(chunks[k]) if k < len(chunks) else None
            done = pending
            # Hand chunk k to the tokenizer before post-processing chunk k-1, so it never idles.
            pending = (rendered, pool.submit(encode, rendered[0])) if rendered is not None else None
            if done is None:
                continue
            (texts, spans), future = done
            for enc, sp in zip(future.result(), spans):
                if backend is not None:
                    ids = np.asarray(enc.ids, dtype=np.int32)
                    labels = labels_for_encoding(enc, ids, sp, opts.loss)
                else:
                    ids = np.asarray(enc[0], dtype=np.int32)
                    mask = labels_from_offsets(np.asarray(enc[1], dtype=np.int64).reshape(-1, 2), sp, opts.loss)
                    labels = np.where(mask, ids, IGNORE).astype(np.int32)
                if len(ids) > opts.max_len:
                    if opts.too_long == "drop":
                        dropped += 1
                        continue
                    ids, labels = ids[: opts.max_len], labels[: opts.max_len]
                    truncated += 1
                    if not (labels != IGNORE).any():  # truncation cut away every target
                        dropped += 1
                        continue
                ids_out.append(ids)
                labels_out.append(labels)
            bar.update(len(texts))
    bar.close()
    if not ids_out:
        why = ("truncating them to --max-len left no reply tokens to learn from" if opts.too_long == "truncate"
               else "all are longer than --max-len")
        raise UserError(f"{source}: no row is left to train on: {why} ({dropped} rows, --max-len {opts.max_len}); "
                        "raise --max-len")
    stats = {"rows": report.total, "bad_rows": len(report.bad), "truncated": truncated, "dropped_too_long": dropped,
             "kept": len(ids_out), "tokens": int(sum(len(x) for x in ids_out)),
             "target_tokens": int(sum(int((x != IGNORE).sum()) for x in labels_out)), "cached": False}
    if truncated or dropped:
        print(f"{source}: {truncated} rows longer than {opts.max_len} tokens truncated, {dropped} dropped",
              file=sys.stderr)
    data = TokenizedData(ids_out, labels_out, stats)
    if cache_file is not None:
        _save(cache_file, data)
    return data
