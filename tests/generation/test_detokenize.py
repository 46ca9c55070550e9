"""One incremental detokenizer for every embedded backend, on the real Qwen2.5-style byte-level
BPE of the tiny fixture: Chinese characters and emoji split across tokens come out whole, and
each new token decodes a short window, not the whole reply again."""

from __future__ import annotations

import pytest

from qwen_kit.generation.detokenize import IncrementalDecoder
from qwen_kit.chat.engine import ChatEngine, GenerationSettings

TEXTS = ["中文测试：你好，世界！🙂 图书馆几点关门？ emoji 😀 mixed",
         "宿舍晚上十一点半关门，校园卡充值五百元。",
         "👩‍👩‍👧 一家人 ❤️ and a plain English tail."]


class CountingTokenizer:
    """The real tokenizer, recording how many ids each ``decode`` call is given."""

    def __init__(self, tokenizer):
        self._tok, self.decoded = tokenizer, []

    def decode(self, ids, **kw):
        self.decoded.append(len(ids))
        return self._tok.decode(ids, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **kw):
        return self._tok(*a, **kw)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_decoded_text_and_no_piece_holds_half_a_character(tiny, text):
    tok = tiny.tokenizer
    ids = ids_of(tok, text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # characters really are split across tokens here
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > len(text) // 4  # streamed as it comes, not held to the end


def test_special_tokens_are_not_text(tiny):
    tok = tiny.tokenizer
    ids = ids_of(tok, "你好") + [tok.convert_tokens_to_ids("<|im_end|>")] + ids_of(tok, "世界")
    decoder = IncrementalDecoder(tok)
    assert "".join([decoder.add(i) for i in ids] + [decoder.flush()]) == "你好世界"


def test_a_reply_cut_inside_a_character_ends_as_decode_shows_it(tiny):
    tok = tiny.tokenizer
    ids = ids_of(tok, "你好🙂")[:-1]  # max_tokens ran out inside the emoji
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.add(i) for i in ids]
    assert "".join(pieces) == "你好"
    assert "".join(pieces) + decoder.flush() == tok.decode(ids, skip_special_tokens=True)


def test_each_token_decodes_a_short_window_not_the_whole_reply(tiny):
    counting = CountingTokenizer(tiny.tokenizer)
    ids = ids_of(tiny.tokenizer, "".join(TEXTS) * 12)
    decoder = IncrementalDecoder(counting)
    text = "".join([decoder.add(i) for i in ids] + [decoder.flush()])
    assert text == tiny.tokenizer.decode(ids, skip_special_tokens=True) and len(ids) > 500
    assert max(counting.decoded) <= 8  # re-decoding the reply would reach len(ids)


def test_the_embedded_engine_streams_through_the_same_decoder(tiny):
    """The terminal's path (generate's streamer): whole characters, in short windows. The model's
    tokens are replaced by a Chinese reply, which a random model would not write."""
    import torch

    counting = CountingTokenizer(tiny.tokenizer)
    engine = ChatEngine(tiny.model, counting, settings=GenerationSettings(max_new_tokens=600, greedy=True),
                        eos_token_ids=tiny.eos_token_ids)
    reply = ids_of(tiny.tokenizer, "".join(TEXTS) * 8)

    def scripted_generate(input_ids, streamer, **kwargs):
        streamer.put(input_ids)
        for i in reply:
            streamer.put(torch.tensor([i]))
        streamer.end()

    engine.generate = scripted_generate
    turn = engine.start_turn("讲个故事")
    counting.decoded.clear()
    pieces = list(turn)
    assert "".join(pieces) == tiny.tokenizer.decode(reply, skip_special_tokens=True)
    assert not any("\ufffd" in p for p in pieces)
    assert max(counting.decoded) <= 8
