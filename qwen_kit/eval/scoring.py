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
                progress: bool = True, desc: str = "scoring") -> list[Scored]:
    import torch
    from tqdm import tqdm

    pad = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    groups: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        groups.setdefault(item.dataset, []).append(n)
    conts = {n: len(tokenizer(it.cont, add_special_tokens=False)["input_ids"]) if it.mode == "ll" else 0
             for n, it in enumerate(items)}
    results: dict[tuple[int, int], float] = {}
    total = sum(len(it.texts) for it in items)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
            for members in groups.values():
                for k in range(max(len(items[n].texts) for n in members)):
                    todo = [n for n in members if k < len(items[n].texts)]
                    for start in range(0, len(todo), batch_size):
                        batch = todo[start:start + batch_size]
                        toks = [tokenizer(items[n].texts[k], add_special_tokens=True)["input_ids"][-max_len:] for n in batch]
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
    finally:
        model.train(was_training)
    scored = []
    for n, item in enumerate(items):
        scores = [results[(n, k)] for k in range(len(item.texts))]
        best = (max if item.mode == "ll" else min)(scores)
        scored.append(Scored(item, scores, item.labels[scores.index(best)]))
    return scored
