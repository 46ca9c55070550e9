"""The default retriever across languages and wordings: USE multilingual v3 on the dense side,
score fusion, and indexes that never mix two embedders' vectors."""

from __future__ import annotations

import json

import pytest

from qwen_kit.retrieval.hybrid import Embedder, HybridRetriever
from qwen_kit.retrieval.index import build_index

DOCS = {
    "library.md": "# City Library\n\nThe city library opens at 9 am and closes at 6 pm on weekdays. "
                  "On Sundays the library is closed. Members may borrow up to eight books for three weeks.\n",
    "cafeteria.txt": "The staff cafeteria serves lunch from 11:30 to 13:30. Vegetarian dishes are marked green.",
    "parking.md": "# Parking\n\nVisitors park in lot B behind the main building. A day permit costs four euro.",
    "宿舍.md": "# 宿舍管理规定\n\n学生宿舍晚上十一点关门，早上六点开门。访客必须在前台登记，并在晚上九点前离开。宿舍内禁止使用电热水壶。",
    "实验室.txt": "化学实验室每周二和周四下午开放。进入实验室必须穿实验服并佩戴护目镜。",
    "健身房.md": "# 健身房\n\n健身房星期天上午九点开门，下午五点关门。学期卡一百二十元。",
}


@pytest.fixture(scope="module")
def minilm():
    return Embedder("minilm")


def test_the_default_embedder_is_bilingual(embedder):
    assert embedder.name == "google/universal-sentence-encoder-multilingual-3" and not embedder.english_only
    question, translation, other = embedder.encode(["宿舍晚上几点关门？", "When does the dormitory close at night?",
                                                    "The staff cafeteria serves lunch."], query=True)
    assert question @ translation > question @ other + 0.2


@pytest.mark.parametrize("question, gold", [
    ("图书馆星期天开放吗？", "library.md"),            # Chinese question, English document
    ("员工餐厅什么时候供应午饭？", "cafeteria.txt"),
    ("When must visitors leave the dormitory?", "宿舍.md"),  # English question, Chinese document
    ("What must I wear to enter the chemistry lab?", "实验室.txt"),
])
def test_a_question_finds_its_document_in_the_other_language(docs, embedder, question, gold):
    retriever, _ = build_index(docs, embedder=embedder, progress=False)
    for mode in ("hybrid", "dense"):
        hits = retriever.search(question, k=3, mode=mode)
        assert hits[0].chunk.file == gold, (mode, [h.chunk.file for h in hits])


def test_fusion_keeps_a_confident_dense_hit_first_when_bm25_matches_nothing(docs, embedder):
    """The Chinese question shares no word with the English library page; BM25 ranks the Chinese
    pages that say 星期天 and 开门 instead. Rank fusion gave those the same credit as a real match
    and put the library second; score fusion sees BM25's weak match and keeps the library first."""
    retriever, _ = build_index(docs, embedder=embedder, progress=False)
    question = "图书馆星期天开门吗？"
    bm25_files = [retriever.chunks[i].file for i, _ in retriever.search_bm25(question, 10)]
    assert bm25_files and "library.md" not in bm25_files  # BM25 finds only other pages
    top = retriever.search(question, k=3)[0]
    assert (top.chunk.file, top.dense_rank, top.bm25_rank) == ("library.md", 1, None)
    worded = retriever.search("健身房星期天几点开门？", k=3)[0]  # and a real BM25 match still counts
    assert worded.chunk.file == "健身房.md" and worded.bm25_rank == 1


def test_an_index_made_by_another_embedder_is_rebuilt_not_mixed(docs, embedder, minilm, tmp_path, capsys):
    index = tmp_path / "idx"
    build_index(docs, index, embedder=minilm, progress=False)
    assert json.loads((index / "manifest.json").read_text())["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
    retriever, report = build_index(docs, index, embedder=embedder, progress=False)
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "all-MiniLM-L6-v2" in note[0] and "indexing every document again" in note[0]
    assert report.chunks_embedded == len(retriever.chunks) > 0 and len(report.added) == len(DOCS)
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["embedder"] == embedder.name and manifest["dim"] == embedder.dim == 512
    reloaded = HybridRetriever.load(index, embedder)
    assert reloaded.vectors.shape == (len(retriever.chunks), 512)
    assert reloaded.search("图书馆星期天开门吗？", k=1)[0].chunk.file == "library.md"


def test_a_memory_index_from_another_embedder_is_rebuilt(tiny, embedder, minilm, tmp_path, capsys):
    """Long-term memory searches with the same retriever: its index cache, made by MiniLM, is
    indexed again from the memory file when the default embedder opens it, with one line saying so."""
    from qwen_kit.chat.memory import LongTermMemory
    from qwen_kit.chat.prompt import Round

    path = tmp_path / "chat_history.txt"
    old = LongTermMemory(path, minilm, tiny.tokenizer, user="alice", quiet=True)
    old.remember([Round("My first car was a green Volvo that I named Brumle.", "A fine name.", 1764000000.0),
                  Round("I study marine biology in Kiel.", "Sounds great.", 1764000100.0)])
    old.save_index()
    manifest = old.index_dir / "manifest.json"
    assert json.loads(manifest.read_text())["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
    capsys.readouterr()
    new = LongTermMemory(path, embedder, tiny.tokenizer, user="alice")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "all-MiniLM-L6-v2" in err[0]
    assert json.loads(manifest.read_text())["embedder"] == embedder.name
    _, extras = new("我的第一辆车叫什么名字？", [])  # and a Chinese question recalls the English memory
    assert "Brumle" in extras["memories"][0]["user_text"]


def test_eval_rag_reports_recall_per_kind_and_language(tmp_path):
    from tests.conftest import ROOT, run_script

    out = tmp_path / "out"
    res = run_script("eval_rag.py", "--docs", str(ROOT / "data" / "knowledge"),
                     "--qa", str(ROOT / "data" / "knowledge_qa_hard.jsonl"), "--out", str(out))
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    lines = (out / "rag_eval.md").read_text(encoding="utf-8").splitlines()
    header = next(line for line in lines if line.startswith("| questions |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0], cells[1]] = dict(zip(cols, cells))
    assert set(rows) == {(k, lang) for k in ("paraphrase", "crosslingual") for lang in ("en", "zh", "all")}
    assert {f"{m} recall@{k}" for m in ("bm25", "dense", "hybrid") for k in (1, 5)} <= set(cols)
    cross = rows["crosslingual", "all"]
    assert cross["n"] == "12" and float(cross["hybrid recall@5"]) > float(cross["bm25 recall@5"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answers": ["a"], "doc": "library.md", "kind": "tricky"}\n', encoding="utf-8")
    res = run_script("eval_rag.py", "--docs", str(ROOT / "data" / "knowledge"), "--qa", str(bad), "--out", str(out))
    assert res.returncode == 2 and "kind must be one of" in res.stderr.decode()
