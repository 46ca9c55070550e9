"""Combining the BM25 and dense result lists into one ranking.

- ``score`` (default): the dense cosine, min-max scaled over the dense pool, plus the share of
  the query's BM25 weight a chunk matches (its BM25 score over the best score any chunk could
  get for that query). The BM25 side is absolute on purpose: when a question shares no real
  words with any document (a paraphrase, the other language), its BM25 list is a handful of
  weak matches on common words, each worth a small share, and a confident dense hit keeps its
  place. Rank-based fusion cannot see that: it gives the first of a list of noise the same
  credit as the first of a list of exact matches. Chosen on the kit's own (non-frozen) questions
  over ``data/knowledge`` (docs/knowledge.md, "Fusion"); weight 0.5, the middle of a plateau.
- ``rrf``: reciprocal rank fusion (k=60): every list alike, whatever its scores.
- ``weighted``: min-max scaled scores of both lists (each list's first gets 1, however weak).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

FUSIONS = ("score", "rrf", "weighted")
RRF_K = 60


def rrf(*ranked: Sequence[int]) -> dict[int, float]:
    """Reciprocal rank fusion of lists of chunk numbers, best first."""
    scored: dict[int, float] = {}
    for ids in ranked:
        for r, i in enumerate(ids, start=1):
            scored[i] = scored.get(i, 0.0) + 1.0 / (RRF_K + r)
    return scored


def weighted_minmax(bm: Sequence[tuple[int, float]], de: Sequence[tuple[int, float]], weight: float) -> dict[int, float]:
    """Each list's scores min-max scaled to 0..1, dense weighted ``weight``, BM25 ``1 - weight``."""
    scored: dict[int, float] = {}
    for w, results in ((1 - weight, bm), (weight, de)):
        if not results:
            continue
        vals = np.array([s for _, s in results])
        lo, span = vals.min(), (vals.max() - vals.min()) or 1.0
        for i, s in results:
            scored[i] = scored.get(i, 0.0) + w * (s - lo) / span
    return scored


def score_fusion(candidates: np.ndarray, bm25_share: np.ndarray, cosine: np.ndarray,
                 dense_pool: np.ndarray, weight: float) -> dict[int, float]:
    """``weight * scaled cosine + (1 - weight) * BM25 share`` for every candidate.

    Args:
        candidates: chunk numbers found by either list.
        bm25_share: per candidate, its BM25 score over the query's best possible score (0..1).
        cosine: per candidate, its cosine with the query (exact, found by dense search or not).
        dense_pool: the cosines of the dense list (its top ``pool``): they set the scale, the
            first dense hit at 1 and the pool's last at 0 (a candidate below the pool goes below 0).
        weight: the dense side's share.
    """
    if len(dense_pool):
        lo, span = float(dense_pool.min()), float(dense_pool.max() - dense_pool.min()) or 1.0
        dense = (cosine - lo) / span
    else:
        dense = np.zeros(len(candidates))
    fused = weight * dense + (1 - weight) * bm25_share
    return {int(i): float(s) for i, s in zip(candidates, fused)}
