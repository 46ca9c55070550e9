"""The streaming chat engine on the tiny model."""

from __future__ import annotations

import copy
import threading

import pytest

from qwen_kit.chat.engine import ChatEngine, GenerationFailed, GenerationSettings
from qwen_kit.errors import UserError


def _engine(tiny, **kw) -> ChatEngine:
    kw.setdefault("settings", GenerationSettings(max_new_tokens=12, greedy=True))
    kw.setdefault("eos_token_ids", tiny.eos_token_ids)
    return ChatEngine(tiny.model, tiny.tokenizer, **kw)


SAMPLED = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0, seed=3)


def _free_run_ids(tiny, prompt: str) -> list[int]:
    """What the engine's sampling settings produce for ``prompt`` when nothing stops them."""
    import torch

    inputs = tiny.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(SAMPLED.seed)
    out = tiny.model.generate(**inputs, eos_token_id=[99999], pad_token_id=0, **SAMPLED.generate_kwargs(inputs["input_ids"].shape[1]))
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_qwen_instruct_stops_on_both_end_ids(tiny):
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = tiny.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert set(tiny.eos_token_ids) == {im_end, eot}


def test_generation_stops_at_any_end_id_of_the_generation_config(tiny):
    prompt = _engine(tiny, settings=SAMPLED).start_turn("hello there").prompt
    free_run = _free_run_ids(tiny, prompt)
    # Declare a token the model first produces mid-reply an end-of-sequence id: the engine
    # must stop right there, wherever that id stands in the list of end ids.
    cut = next(i for i in range(2, len(free_run)) if free_run[i] not in free_run[:i]) + 1
    stop_id = free_run[cut - 1]
    for ids in ([stop_id, 99999], [99999, stop_id]):
        turn = _engine(tiny, eos_token_ids=ids, settings=SAMPLED).start_turn("hello there")
        list(turn)
        assert turn.stats.new_tokens == cut
        assert turn.stats.stopped_at_eos and turn.stats.last_token_id == stop_id


def test_streamed_pieces_form_the_reply_and_are_recorded(tiny):
    engine = _engine(tiny, eos_token_ids=[99999])
    turn = engine.start_turn("Tell me about the library")
    pieces = list(turn)
    assert len(pieces) >= 2 and "".join(pieces) == turn.text
    assert turn.stats.new_tokens == 12 and not turn.stats.stopped_at_eos
    assert turn.stats.first_token_s is not None and turn.stats.first_token_s <= turn.stats.total_s
    assert [r.user for r in engine.rounds] == ["Tell me about the library"]


def test_closing_the_stream_stops_generation_and_keeps_the_partial_reply(tiny):
    """A Stop button or a closed tab: the model stops at the next token, the round keeps the
    text shown so far, and the engine is ready for the next turn."""
    engine = _engine(tiny, eos_token_ids=[99999], settings=GenerationSettings(max_new_tokens=2000, greedy=True))
    turn = engine.start_turn("Tell me about the library")
    stream = iter(turn)
    shown = next(stream) + next(stream)
    stream.close()
    assert turn.stats.new_tokens < 2000  # without the stop it always runs to 2000 (no end id can occur)
    assert engine.rounds[-1].user == "Tell me about the library"
    assert engine.rounds[-1].assistant.startswith(shown.strip())
    assert len(list(engine.start_turn("next"))) > 0 and len(engine.rounds) == 2


@pytest.mark.parametrize("mode", ["iterate", "run"])
def test_an_exception_during_generation_ends_the_turn(tiny, mode):
    engine = _engine(tiny)

    def broken_generate(**kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    engine.generate = broken_generate
    done = threading.Event()
    result: list[BaseException] = []

    def consume():
        try:
            turn = engine.start_turn("hi")
            list(turn) if mode == "iterate" else turn.run()
        except BaseException as err:  # noqa: BLE001
            result.append(err)
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert done.wait(30), "the turn hung after the generation thread failed"
    assert isinstance(result[0], GenerationFailed) and "out of memory" in str(result[0])
    assert engine.rounds == []  # a failed turn is not recorded as a round


def test_overflowing_rounds_leave_oldest_first_and_are_handed_over(tiny):
    evicted = []
    engine = _engine(tiny, max_context=160, settings=GenerationSettings(max_new_tokens=8, greedy=True),
                     on_evict=evicted.extend, system="S")
    for i in range(8):
        turn = engine.start_turn(f"question {i} about the library opening hours")
        list(turn)
        assert turn.stats.prompt_tokens + 8 <= 160
    assert evicted, "eight rounds should not fit 160 tokens"
    assert [r.user for r in evicted] == [r.user for r in engine.rounds[: len(evicted)]]
    assert engine.window_start == len(evicted)
    assert engine.in_prompt()[-1].user == "question 7 about the library opening hours"


def test_context_smaller_than_system_prompt_is_refused(tiny):
    with pytest.raises(UserError, match="system prompt alone needs"):
        _engine(tiny, system="a long system prompt " * 20, max_context=64,
                settings=GenerationSettings(max_new_tokens=16))


def test_seeded_sampling_repeats(tiny):
    settings = GenerationSettings(max_new_tokens=10, temperature=1.0, top_p=1.0, top_k=0, seed=7)
    a = _engine(tiny, settings=settings, eos_token_ids=[99999]).reply("hello")
    b = _engine(tiny, settings=copy.copy(settings), eos_token_ids=[99999]).reply("hello")
    assert a == b


def test_replies_repeated_word_for_word_are_left_out_of_the_prompt(tiny):
    from qwen_kit.chat.prompt import Round

    engine = _engine(tiny)
    engine.rounds = [Round("Where does my sister live?", "In Tromso."), Round("And my cat?", "I am not sure."),
                     Round("My bike?", "I am not sure."), Round("My car?", "A red Volvo.")]
    turn = engine.start_turn("And my dog?")
    assert "I am not sure." not in turn.prompt  # both copies: one left in would be copied again
    assert "In Tromso." in turn.prompt and "A red Volvo." in turn.prompt
    assert len(engine.rounds) == 4 and engine.window_start == 0  # the history itself keeps every round
    engine.drop_repeated_replies = False
    assert engine.start_turn("And my dog?").prompt.count("I am not sure.") == 2

