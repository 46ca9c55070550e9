"""Scoring multiple-choice items with a causal LM, by OpenCompass's rules for base HF models.

For each label, the items of a dataset are scored in batches, in dataset order, left-padded with
the pad id and truncated from the left to ``max_len`` — exactly how OpenCompass 0.5.4's
``HuggingFaceBaseModel`` batches them. That matters: with left padding the loss of a shorter
text also counts the prediction of its first token from the last pad position, so a score
depends on its batch. Then, per text (pad ids neither counted nor used as targets):

- ``ppl`` = the sum of next-token NLLs / the number of non-pad tokens (``get_ppl``); lowest
  wins, ties go to the first label;
- ``ll`` = −that, with the first m−1 positions of the padded row masked and m subtracted from
  the count, m being the token count of the item's ``cont`` (``get_loglikelihood``, mask
  included as OpenCompass has it); highest wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from qwen_kit.eval.datasets import McqItem


@dataclass
class Scored:
    item: McqItem
    scores: list[float]
    prediction: str

    @property
    def correct(self) -> bool:
        return self.prediction == self.item.gold


def pad_id_of(tokenizer: Any) -> int:
    """OpenCompass's pad id: the tokenizer's, else its end-of-sequence id."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def score_items(model: Any, tokenizer: Any, items: Sequence[McqItem], batch_size: int = 8, max_len: int = 2048,
                progress: bool = True, desc: str = "scoring", share_prefix: bool = True) -> list[Scored]:
    """Score every label text of every item. With ``share_prefix`` (the default), the part the
    label texts of an item have in common is run through the model once and each label's own
    ending continues from its cache — the same sums, so the same scores (within float
    rounding, ~1e-6), for a fraction of the compute: an MMLU item's four texts differ only in
    the last letter. Items where that cannot reproduce OpenCompass's arithmetic exactly
    (log-likelihood items, truncated texts, texts containing the pad id) take the plain path."""
    import torch
    from tqdm import tqdm

    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    toks = [[tokenizer(t, add_special_tokens=True)["input_ids"] for t in it.texts] for it in items]
    # which texts OpenCompass pads (shorter than the longest in their batch: per dataset, per label, in order)
    padded: dict[tuple[int, int], bool] = {}
    groups: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        groups.setdefault(item.dataset, []).append(n)
    for members in groups.values():
        for k in range(max(len(items[n].texts) for n in members)):
            todo = [n for n in members if k < len(items[n].texts)]
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                width = max(min(len(toks[n][k]), max_len) for n in batch)
                for n in batch:
                    padded[(n, k)] = min(len(toks[n][k]), max_len) < width
    fast = [n for n, it in enumerate(items) if share_prefix and it.mode == "ppl" and len(it.texts) > 1
            and all(len(t) <= max_len and pad not in t for t in toks[n]) and _common(toks[n]) >= 1]
    slow = sorted(set(range(len(items))) - set(fast))
    results: dict[tuple[int, int], float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=sum(len(it.texts) for it in items), desc=desc,
                                          disable=not progress, leave=False) as bar:
            if fast:
                pad_logits = model(input_ids=torch.tensor([[pad, toks[fast[0]][0][0]]], device=device),
                                   attention_mask=torch.tensor([[0, 1]], device=device)).logits[0, 0].float()
                for start in range(0, len(fast), batch_size):
                    chunk = fast[start:start + batch_size]
                    _shared(model, [toks[n] for n in chunk], pad, pad_logits, device,
                            [[padded[(n, k)] for k in range(len(toks[n]))] for n in chunk],
                            lambda i, k, v, chunk=chunk: results.__setitem__((chunk[i], k), v))
                    bar.update(sum(len(toks[n]) for n in chunk))
            if slow:
                _plain(model, tokenizer, items, toks, slow, batch_size, max_len, pad, device, results, bar)
    finally:
        model.train(was_training)
    scored = []
    for n, item in enumerate(items):
        scores = [results[(n, k)] for k in range(len(item.texts))]
        best = (max if item.mode == "ll" else min)(scores)
        scored.append(Scored(item, scores, item.labels[scores.index(best)]))
    return scored


def _common(seqs: list[list[int]]) -> int:
    """Tokens all label texts share at the start, leaving each at least one of its own."""
    limit = min(len(s) for s in seqs) - 1
    c = 0
    while c < limit and all(s[c] == seqs[0][c] for s in seqs):
        c += 1
    return c


def _shared(model: Any, seqs_per_item: list[list[list[int]]], pad: int, pad_logits: Any, device: Any,
            padded: list[list[bool]], put: Any) -> None:
    """Prefix once per item (left-padded batch, cached), then every label's ending from the cache."""
    import torch
    import torch.nn.functional as F

    prefixes = [s[0][:_common(s)] for s in seqs_per_item]
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prefixes):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    logits = out.logits.float()
    prefix_nll = []
    for i, p in enumerate(prefixes):
        start = width - len(p)
        if len(p) > 1:
            prefix_nll.append(F.cross_entropy(logits[i, start:width - 1], ids[i, start + 1:width], reduction="sum"))
        else:
            prefix_nll.append(torch.zeros((), device=device))
    rows = [(i, k) for i, seqs in enumerate(seqs_per_item) for k in range(len(seqs))]
    suffixes = [seqs_per_item[i][k][len(prefixes[i]):] for i, k in rows]
    s_width = max(len(s) for s in suffixes)
    s_ids = torch.full((len(rows), s_width), pad, dtype=torch.long)
    s_mask = torch.zeros_like(s_ids)
    for r, sfx in enumerate(suffixes):
        s_ids[r, : len(sfx)] = torch.tensor(sfx)
        s_mask[r, : len(sfx)] = 1
    s_ids, s_mask = s_ids.to(device), s_mask.to(device)
    index = torch.tensor([i for i, _ in rows], device=device)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.reorder_cache(index)
    s_logits = model(input_ids=s_ids, attention_mask=torch.cat([mask[index], s_mask], dim=1),
                     use_cache=True, **{_cache_kwarg(model): cache}).logits.float()
    for r, (i, k) in enumerate(rows):
        sfx = suffixes[r]
        total = prefix_nll[i] + F.cross_entropy(logits[i, width - 1], s_ids[r, 0], reduction="sum")
        if len(sfx) > 1:
            total = total + F.cross_entropy(s_logits[r, : len(sfx) - 1], s_ids[r, 1: len(sfx)], reduction="sum")
        if padded[i][k]:  # OpenCompass's extra term: the first token predicted from a pad position
            total = total + F.cross_entropy(pad_logits, torch.tensor(seqs_per_item[i][k][0], device=device),
                                            reduction="sum")
        put(i, k, float(total / len(seqs_per_item[i][k])))


def _plain(model: Any, tokenizer: Any, items: Sequence[McqItem], all_toks: list[list[list[int]]], which: list[int],
           batch_size: int, max_len: int, pad: int, device: Any, results: dict, bar: Any) -> None:
    """OpenCompass's own computation: per dataset, per label, batches in order, left-padded."""
    import torch

    groups: dict[str, list[int]] = {}
    for n in which:
        groups.setdefault(items[n].dataset, []).append(n)
    conts = {n: len(tokenizer(items[n].cont, add_special_tokens=False)["input_ids"]) if items[n].mode == "ll" else 0
             for n in which}
    for members in groups.values():
        for k in range(max(len(items[n].texts) for n in members)):
            todo = [n for n in members if k < len(items[n].texts)]
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                toks = [all_toks[n][k][-max_len:] for n in batch]  # OpenCompass truncates from the left
                width = max(len(t) for t in toks)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, t in enumerate(toks):
                    ids[row, width - len(t):] = torch.tensor(t)
                    mask[row, width - len(t):] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float()
                targets = ids[:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad,
                    reduction="none").view(targets.shape)
                counted = (ids != pad).sum(-1)
                for row, n in enumerate(batch):
                    if items[n].mode == "ll":
                        m = conts[n]
                        keep = torch.zeros_like(nll[row])
                        keep[max(m - 1, 0):] = 1
                        value = -float((nll[row] * keep).sum() / (counted[row] - m))
                    else:
                        value = float(nll[row].sum() / counted[row])
                    results[(n, k)] = value
                bar.update(len(batch))


def _cache_kwarg(model: Any) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)."""
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"
