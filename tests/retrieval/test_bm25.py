import math

import numpy as np
from rank_bm25 import BM25Okapi

from qwen_kit.retrieval.bm25 import BM25Index
from qwen_kit.retrieval.hybrid import bm25_tokens

DOCS = ["The library closes at 10 pm on weekdays.", "图书馆周末晚上八点关门。", "Lunch in the canteen has a vegetarian option.",
        "实验室必须佩戴护目镜。", "The the the the library", "访客需要在门口登记。", "Goggles are required in the chemistry lab.",
        "宿舍晚上十一点关门，访客不得留宿。"]


class LuceneIdfOkapi(BM25Okapi):
    """rank-bm25's Okapi scoring with Lucene's always-positive idf: the oracle."""

    def _calc_idf(self, nd):
        for word, freq in nd.items():
            self.idf[word] = math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5))


def test_a_term_in_every_document_still_scores():
    index = BM25Index()
    index.add([bm25_tokens("我的自行车锁密码是 4729。"), bm25_tokens("今天天气不错。")])
    assert index.top(bm25_tokens("自行车锁密码"), 2)[0][0] == 0  # classic Okapi idf: log(1.5/1.5) = 0


def test_scores_built_in_two_batches_equal_rank_bm25():
    tokens = [bm25_tokens(d) for d in DOCS]
    index = BM25Index()
    index.add(tokens[:3])
    index.add(tokens[3:])  # incremental: must equal an index built at once
    oracle = LuceneIdfOkapi(tokens)
    for query in ["library close", "the library the", "访客 登记", "护目镜 lab", "unknown words"]:
        q = bm25_tokens(query)
        expected = oracle.get_scores(q)
        got = index.score_array(q)
        if got is None:
            assert not expected.any()
            continue
        assert np.allclose(got, expected)
        ranked = [i for i in sorted(range(len(DOCS)), key=lambda i: -expected[i]) if expected[i] > 0]
        assert [i for i, _ in index.top(q, 3)] == ranked[:3]


def test_a_document_added_after_searching_is_found(embedder):
    from qwen_kit.retrieval.chunking import Chunk
    from qwen_kit.retrieval.hybrid import HybridRetriever

    r = HybridRetriever(embedder)
    r.add([Chunk(f"d#{i}", "d", i, "", t) for i, t in enumerate(DOCS[:4])])
    assert r.search("visitors must register", k=2)  # indexes now exist
    r.add([Chunk("new#0", "new", 0, "", "Visitors must register at the front gate.")])
    assert r.search("visitors must register", k=1)[0].chunk.id == "new#0"
    assert r.search("visitors must register", k=1, mode="bm25")[0].chunk.id == "new#0"


def test_a_dense_search_leaves_torch_threads_alone(embedder):
    import torch

    from qwen_kit.retrieval.chunking import Chunk
    from qwen_kit.retrieval.hybrid import HybridRetriever

    before = torch.get_num_threads()
    r = HybridRetriever(embedder)
    r.add([Chunk(f"d#{i}", "d", i, "", t) for i, t in enumerate(DOCS)])
    r.search("library", k=2, mode="dense")
    assert torch.get_num_threads() == before  # FAISS and torch share one OpenMP runtime
