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


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 50) -> list[int]:
    """An epoch's order of example indices, cut by the DataLoader into batches of
    ``batch_size`` that hold examples of similar length.

    As transformers' length grouping: shuffle, take megabatches of ``mega_batches`` batches,
    sort each by length and cut it into batches. Unlike it, the megabatch never shrinks on a
    small data set (transformers' shrinks it to one batch below 200 batch-sizes of rows, which
    leaves a few hundred rows unsorted), and the batches are then shuffled as wholes, so training
    does not walk from long to short rows inside every megabatch. The longest batch comes first
    (an out-of-memory error shows at step 1, not hours in) and an incomplete batch comes last,
    so every other cut falls on a batch boundary (under DDP each rank takes whole batches).
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_batches
    batches: list[np.ndarray] = []
    for lo in range(0, len(order), mega):
        chunk = order[lo: lo + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    partial = [b for b in batches if len(b) < batch_size]
    full = [full[i] for i in rng.permutation(len(full))]
    if full:
        longest = max(range(len(full)), key=lambda i: int(lengths[full[i]].max()))
        full.insert(0, full.pop(longest))
    return [int(i) for b in full + partial for i in b]


class LengthGroupedSampler:
    """A torch Sampler over :func:`length_grouped_order`, reshuffled every epoch (``seed`` +
    epoch), so a resumed run replays the same order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = length_grouped_order(self.lengths, self.batch_size, self.seed + self.epoch)
        self.epoch += 1
        return iter(order)


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
