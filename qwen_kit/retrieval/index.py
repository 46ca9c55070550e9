"""Building, updating and opening a document index (the knowledge base)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_kit.errors import UserError
from qwen_kit.retrieval.chunking import chunk_document
from qwen_kit.retrieval.hybrid import Embedder, HybridRetriever, OtherEmbedder, UntrustedIndex, file_hash
from qwen_kit.retrieval.loaders import LoadReport, load_folder


@dataclass
class BuildReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks_embedded: int = 0
    load: LoadReport = field(default_factory=LoadReport)

    def summary(self) -> str:
        return (f"{len(self.added)} files added, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{self.unchanged} unchanged; {self.chunks_embedded} chunks embedded; "
                f"{len(self.load.skipped)} files skipped")


def build_index(docs: str | Path, index: str | Path | None = None, embedder: Embedder | None = None,
                chunk_size: int = 200, overlap: int = 40, progress: bool = True,
                **search: Any) -> tuple[HybridRetriever, BuildReport]:
    """Index every document under ``docs``. With ``index``, an existing index there is updated
    incrementally (only added or changed files are embedded again) and the result is saved.

    Raises:
        UserError: ``docs`` is not a folder. An ``index`` built with another embedder, or not
            written by this version of the kit, is rebuilt from ``docs`` with a one-line note.
    """
    folder = Path(docs).expanduser()
    if not folder.is_dir():
        raise UserError(f"documents folder {folder} does not exist or is not a folder")
    embedder = embedder or Embedder()
    index_dir = Path(index).expanduser() if index else None
    retriever = HybridRetriever(embedder, **search)
    if index_dir is not None and (index_dir / "manifest.json").is_file():
        try:
            retriever = HybridRetriever.load(index_dir, embedder, **search)
        except OtherEmbedder as err:  # never mix two embedders' vectors: the documents are here
            print(f"index {index_dir} was built with embedder {err.built_with}; indexing every document again "
                  f"with {err.wanted}", file=sys.stderr)
        except UntrustedIndex as err:  # the documents are here: index them all again
            print(f"{err}; indexing every document again", file=sys.stderr)
    documents, load_report = load_folder(folder, quiet=not progress)
    report = BuildReport(load=load_report)
    current = {d.path: file_hash(d.text) for d in documents}
    old = dict(retriever.file_hashes)
    report.removed = sorted(set(old) - set(current))
    report.changed = sorted(f for f in current if f in old and old[f] != current[f])
    report.added = sorted(f for f in current if f not in old)
    report.unchanged = len(current) - len(report.changed) - len(report.added)
    retriever.remove_files(set(report.removed) | set(report.changed))

    count = embedder.count_tokens  # chunk sizes in the embedder's own tokens
    todo = set(report.added) | set(report.changed)
    new_chunks = [c for d in documents if d.path in todo for c in chunk_document(d.path, d.text, count, chunk_size, overlap)]
    retriever.add(new_chunks, progress=progress and len(new_chunks) > 64)
    report.chunks_embedded = len(new_chunks)
    retriever.file_hashes = {**{f: h for f, h in old.items() if f in current and f not in todo},
                             **{f: current[f] for f in todo}}
    if index_dir is not None:
        retriever.save(index_dir)
    if progress:
        print(f"{folder}: {report.summary()}", file=sys.stderr)
    return retriever, report


def open_knowledge_base(path: str | Path, embedder: Embedder | None = None, **search: Any) -> HybridRetriever:
    """A saved index folder (manifest.json) is loaded; a documents folder is indexed in memory.
    ``search``: fusion, weight and index_type for the retriever (a saved index's own otherwise)."""
    p = Path(path).expanduser()
    if (p / "manifest.json").is_file():
        return HybridRetriever.load(p, embedder or Embedder(), **search)
    return build_index(p, None, embedder, progress=False, **search)[0]
