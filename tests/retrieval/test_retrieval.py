"""Hybrid retrieval over real files with the default embedder (USE multilingual v3)."""

from __future__ import annotations

import os

import pytest

from qwen_kit.errors import UserError
from qwen_kit.retrieval.chunking import chunk_document, split_sentences
from qwen_kit.retrieval.hybrid import Embedder, HybridRetriever, bm25_tokens
from qwen_kit.retrieval.index import build_index, open_knowledge_base

DOCS = {
    "library.md": "# City Library\n\nThe city library opens at 9 am and closes at 6 pm on weekdays. "
                  "On Sundays the library is closed. Members may borrow up to eight books for three weeks.\n",
    "cafeteria.txt": "The staff cafeteria serves lunch from 11:30 to 13:30. Vegetarian dishes are marked green.",
    "宿舍.md": "# 宿舍管理规定\n\n学生宿舍晚上十一点关门。访客必须在前台登记，并在晚上九点前离开。宿舍内禁止使用电热水壶。",
    "实验室.txt": "化学实验室每周二和周四下午开放。进入实验室必须穿实验服并佩戴护目镜。",
}


def test_chinese_sentences_split_at_chinese_punctuation():
    assert split_sentences("宿舍十一点关门。访客要登记！可以吗？可以；谢谢") == \
        ["宿舍十一点关门。", "访客要登记！", "可以吗？", "可以；", "谢谢"]
    assert bm25_tokens("宿舍晚上十一点关门") != ["宿舍晚上十一点关门"]  # segmented, not one token


def test_chunks_respect_size_overlap_and_headings():
    text = "# Rules\n\n" + " ".join(f"Sentence number {i} is here." for i in range(40)) + "\n\n# Other\n\nLast one."
    chunks = chunk_document("r.md", text, lambda s: len(s.split()), size=30, overlap=10)
    assert all(len(c.text.split()) <= 30 for c in chunks)
    assert chunks[0].heading == "Rules" and chunks[-1].heading == "Other" and chunks[-1].text == "Last one."
    first_of_second = chunks[1].text.split(".")[0]
    assert first_of_second in chunks[0].text  # overlap carries the previous sentences
    assert [c.position for c in chunks] == list(range(len(chunks)))


def test_a_chinese_question_finds_its_chunk_through_bm25_alone(docs, embedder):
    retriever, _ = build_index(docs, embedder=embedder, progress=False)
    hits = retriever.search("宿舍几点关门？", k=3, mode="bm25")
    assert hits and hits[0].chunk.file == "宿舍.md"


def test_bm25_ranking_matches_rank_bm25(docs, embedder):
    from tests.retrieval.test_bm25 import LuceneIdfOkapi

    retriever, _ = build_index(docs, embedder=embedder, progress=False)
    oracle = LuceneIdfOkapi(retriever.tokens)
    for query in ["library closed Sundays", "实验室 护目镜", "lunch vegetarian", "访客 登记"]:
        scores = oracle.get_scores(bm25_tokens(query))
        expected = [i for i in sorted(range(len(scores)), key=lambda i: -scores[i]) if scores[i] > 0]
        got = [retriever.chunks.index(h.chunk) for h in retriever.search(query, k=10, mode="bm25")]
        assert got == expected[: len(got)] and got


def test_a_chunk_found_by_both_retrievers_ranks_first(docs, embedder):
    retriever, _ = build_index(docs, embedder=embedder, progress=False)
    hits = retriever.search("When does the library close?", k=4)
    assert hits[0].chunk.file == "library.md"
    assert hits[0].bm25_rank == 1 and hits[0].dense_rank == 1


def test_a_saved_index_reloads_to_identical_results(docs, embedder, tmp_path):
    built, _ = build_index(docs, tmp_path / "idx", embedder=embedder, progress=False)
    loaded = open_knowledge_base(tmp_path / "idx", embedder)
    for q in ["When does the library close?", "宿舍几点关门？", "goggles in the lab"]:
        a, b = built.search(q, k=4), loaded.search(q, k=4)
        assert [(h.chunk.id, round(h.score, 6)) for h in a] == [(h.chunk.id, round(h.score, 6)) for h in b]
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "idx").iterdir())


def test_incremental_rebuild_embeds_only_what_changed(docs, embedder, tmp_path):
    _, first = build_index(docs, tmp_path / "idx", embedder=embedder, progress=False)
    assert len(first.added) == 4
    (docs / "cafeteria.txt").write_text("The staff cafeteria now serves lunch from 12:00 to 14:00.", encoding="utf-8")
    (docs / "实验室.txt").unlink()
    (docs / "new.txt").write_text("The gym opens at 7 am.", encoding="utf-8")
    retriever, second = build_index(docs, tmp_path / "idx", embedder=embedder, progress=False)
    assert second.changed == ["cafeteria.txt"] and second.added == ["new.txt"] and second.removed == ["实验室.txt"]
    assert second.unchanged == 2 and second.chunks_embedded == 2
    assert {c.file for c in retriever.chunks} == {"library.md", "cafeteria.txt", "宿舍.md", "new.txt"}
    assert "12:00" in retriever.search("cafeteria lunch hours", k=1)[0].chunk.text


def test_bad_files_are_skipped_and_counted(docs, embedder, tmp_path):
    (docs / "gbk.txt").write_bytes("宿舍规定".encode("gbk"))
    (docs / "empty.md").write_text("   \n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    outside = tmp_path / "secret.txt"
    outside.write_text("password=hunter2")
    os.symlink(outside, docs / "link.txt")
    retriever, report = build_index(docs, embedder=embedder, progress=False)
    skipped = dict(report.load.skipped)
    assert set(skipped) == {"gbk.txt", "empty.md", "broken.pdf", "link.txt"}
    assert "not UTF-8" in skipped["gbk.txt"] and "outside" in skipped["link.txt"]
    assert report.load.loaded == 4 and not any("hunter2" in c.text for c in retriever.chunks)


def test_an_index_from_another_embedder_is_refused(docs, embedder, tmp_path):
    build_index(docs, tmp_path / "idx", embedder=embedder, progress=False)
    other = Embedder.__new__(Embedder)
    other.name, other.model, other.query_prefix = "BAAI/bge-small-zh-v1.5", embedder.model, ""
    with pytest.raises(UserError, match=f"built with embedder {embedder.name}, not BAAI/bge-small-zh-v1.5"):
        HybridRetriever.load(tmp_path / "idx", other)


def test_pdf_docx_and_html_are_read(tmp_path, embedder):
    import docx

    folder = tmp_path / "mixed"
    folder.mkdir()
    d = docx.Document()
    d.add_heading("Parking", level=1)
    d.add_paragraph("Visitors park in lot B behind the main building.")
    d.save(folder / "parking.docx")
    (folder / "page.html").write_text("<html><script>var x=1;</script><h2>Wifi</h2><p>The wifi password is "
                                      "on the card at reception.</p></html>", encoding="utf-8")
    retriever, report = build_index(folder, embedder=embedder, progress=False)
    assert report.load.loaded == 2
    by_file = {c.file: c for c in retriever.chunks}
    assert by_file["parking.docx"].heading == "Parking" and "lot B" in by_file["parking.docx"].text
    assert by_file["page.html"].heading == "Wifi" and "var x" not in by_file["page.html"].text


def test_build_index_script_reports_and_refuses_a_missing_folder(docs, tmp_path):
    from tests.conftest import run_script

    res = run_script("build_index.py", str(docs), "--index", str(tmp_path / "i"))
    assert res.returncode == 0 and b"4 files added" in res.stderr
    res = run_script("build_index.py", str(tmp_path / "nope"), "--index", str(tmp_path / "i"))
    assert res.returncode == 2 and b"does not exist" in res.stderr


def test_only_an_index_the_kit_wrote_is_loaded(embedder, tmp_path):
    """No FAISS file is ever deserialised, and files that are not the ones the manifest names are
    refused before they are parsed; build_index re-indexes such a folder from the documents."""
    import json

    import pytest

    from qwen_kit.errors import UserError
    from qwen_kit.retrieval.hybrid import HybridRetriever
    from qwen_kit.retrieval.index import build_index
    from tests.conftest import ROOT

    index = tmp_path / "idx"
    build_index(ROOT / "data" / "knowledge", index, embedder, progress=False)
    assert sorted(p.name for p in index.iterdir()) == ["chunks.jsonl", "manifest.json", "vectors.npy"]
    HybridRetriever.load(index, embedder)  # as written: fine

    vectors = (index / "vectors.npy").read_bytes()
    (index / "vectors.npy").write_bytes(vectors[:-8] + b"\0" * 8)  # tampered or torn
    with pytest.raises(UserError, match="vectors.npy is not the file the kit wrote"):
        HybridRetriever.load(index, embedder)
    (index / "vectors.npy").write_bytes(vectors)

    manifest = json.loads((index / "manifest.json").read_text())
    old = {k: v for k, v in manifest.items() if k != "sha256"} | {"version": 1}  # an earlier version's folder
    (index / "manifest.json").write_text(json.dumps(old))
    (index / "vectors.faiss").write_bytes(b"not a faiss file at all")  # would crash or worse if parsed
    with pytest.raises(UserError, match="earlier version.*build_index.py"):
        HybridRetriever.load(index, embedder)
    retriever, report = build_index(ROOT / "data" / "knowledge", index, embedder, progress=False)
    assert report.chunks_embedded == len(retriever.chunks) > 0 and not (index / "vectors.faiss").exists()
    HybridRetriever.load(index, embedder)


def test_hnsw_and_weighted_fusion_are_reachable_from_the_scripts(tmp_path):
    import json

    from tests.conftest import ROOT, run_script

    index = tmp_path / "idx"
    res = run_script("build_index.py", str(ROOT / "data" / "knowledge"), "--index", str(index), "--index-type", "hnsw",
                     "--fusion", "weighted", "--fusion-weight", "0.7")
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    manifest = json.loads((index / "manifest.json").read_text())
    assert (manifest["index_type"], manifest["fusion"], manifest["weight"]) == ("hnsw", "weighted", 0.7)
    bad = run_script("chat.py", "--model", "no-such-model", "--rag", str(index), "--fusion-weight", "2")
    assert bad.returncode == 2 and "--fusion-weight must be between 0 and 1" in bad.stderr.decode()
    from qwen_kit.chat.pipeline import ChatConfig, open_knowledge
    from qwen_kit.retrieval.hybrid import Embedder

    embedder = Embedder()
    saved = open_knowledge([str(index)], embedder, ChatConfig())  # the index's own choices
    assert (saved.index_type, saved.fusion, saved.weight) == ("hnsw", "weighted", 0.7)
    flat = open_knowledge([str(index)], embedder, ChatConfig(index_type="flat", fusion="rrf"))  # the flags win
    assert (flat.index_type, flat.fusion) == ("flat", "rrf")
    hits = flat.search("When does the library close on weekdays?", k=3)
    assert hits and hits[0].chunk.file == "library.md"


def test_the_default_index_is_exact_below_the_measured_crossover_and_hnsw_above(embedder):
    import numpy as np

    from qwen_kit.retrieval.chunking import Chunk
    from qwen_kit.retrieval.hybrid import HNSW_FROM, HybridRetriever

    rng = np.random.default_rng(0)

    def retriever(n):
        vectors = rng.standard_normal((n, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        r = HybridRetriever(embedder)  # the default, as chat.py and build_index.py use it
        r.add([Chunk(f"d#{i}", "d", i, "", f"note {i}") for i in range(n)], vectors=vectors)
        return r, vectors

    small, _ = retriever(HNSW_FROM - 1)
    large, vectors = retriever(HNSW_FROM)
    assert small.dense_kind() == "flat" and large.dense_kind() == "hnsw"
    small.search("note 7", k=3)  # builds each FAISS index
    large.search("note 7", k=3)
    assert type(small._faiss).__name__ == "IndexFlatIP" and type(large._faiss).__name__ == "IndexHNSWFlat"
    # approximate, but it finds a stored vector's own row
    found = large._faiss.search(vectors[123:124], 1)[1][0][0]
    assert found == 123
