"""Batching: padding-free packing, or length-grouped padded batches.

Packed: examples are placed into bins of at most ``max_len`` tokens (best fit,
longest first). A micro-batch of bins is flattened into one row; position ids restart
at 0 for every example, and transformers' attention builds a block-diagonal mask from
them, so no example attends to another. No token is padding.

Unpacked: each micro-batch holds examples of similar length (less padding), padded on
the right to the longest one.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import numpy as np

from qwen_kit.data.render import IGNORE


def pack_examples(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Group example indices into bins of at most ``max_len`` tokens (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            if room - n > 0:
                bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            if max_len - n > 0:
                bisect.insort(free, (max_len - n, len(bins) - 1))
    return bins


class SFTDataset:
    """A map-style dataset of training items: one example, or one bin of packed examples."""

    def __init__(self, input_ids: list[np.ndarray], labels: list[np.ndarray], packed: bool, max_len: int):
        self.input_ids, self.labels, self.packed = input_ids, labels, packed
        self.items = pack_examples([len(x) for x in input_ids], max_len) if packed else [[i] for i in range(len(input_ids))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        idx = self.items[k]
        return {"input_ids": [self.input_ids[i] for i in idx], "labels": [self.labels[i] for i in idx]}

    def lengths(self) -> list[int]:
        return [sum(len(self.input_ids[i]) for i in idx) for idx in self.items]


class SFTCollator:
    """Builds model inputs from dataset items (see module docstring)."""

    def __init__(self, packed: bool, pad_token_id: int):
        self.packed, self.pad_token_id = packed, pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        examples = [(ids, lab) for item in items for ids, lab in zip(item["input_ids"], item["labels"])]
        if self.packed:
            ids = np.concatenate([e[0] for e in examples])
            labels = np.concatenate([e[1] for e in examples])
            positions = np.concatenate([np.arange(len(e[0])) for e in examples])
            return {"input_ids": torch.from_numpy(ids.astype(np.int64))[None],
                    "labels": torch.from_numpy(labels.astype(np.int64))[None],
                    "position_ids": torch.from_numpy(positions.astype(np.int64))[None]}
        width = max(len(e[0]) for e in examples)
        ids = np.full((len(examples), width), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
        mask = np.zeros((len(examples), width), dtype=np.int64)
        for r, (x, y) in enumerate(examples):
            ids[r, : len(x)], labels[r, : len(y)], mask[r, : len(x)] = x, y, 1
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                "attention_mask": torch.from_numpy(mask)}


def padding_efficiency(lengths: Sequence[int], batch_size: int, packed: bool,
                       seed: int = 0) -> float:
    """Real tokens / tokens computed for random batches of ``batch_size`` items."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    if packed:
        return 1.0  # flattened rows carry no padding at all
    order = rng.permutation(len(lengths))
    real = computed = 0
    for lo in range(0, len(order), batch_size):
        chunk = lengths[order[lo: lo + batch_size]]
        real += int(chunk.sum())
        computed += int(chunk.max()) * len(chunk)
    return real / computed
