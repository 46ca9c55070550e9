"""One sampling rule for every backend: the embedded model, the continuous batcher (alone and in
a batch) and the batched backend give the tokens transformers' own ``generate`` gives for the
same settings and seed, setting by setting; the remote backends are sent the same settings."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from qwen_kit.generation.backends import BatchedBackend, OpenAIBackend
from qwen_kit.chat.engine import ChatEngine
from qwen_kit.generation.sampling import GenerationSettings
from qwen_kit.errors import UserError
from qwen_kit.generation.batching import ContinuousBatcher, Finished
from qwen_kit.generation.vllm import sampling_params

N = 16  # new tokens per reply
NEVER = [99999]  # an end id no token has: every reply runs to N tokens


@pytest.fixture(scope="module")
def peaked(tiny):
    """The tiny model made to decide: query/key weights ×8 (attention that depends on position
    and mask) and the final norm ×8 (logits spread like a trained model's: the likeliest token
    ~12%, half the mass in ~40 tokens, instead of a flat 1/1200). On a flat distribution top-k,
    top-p and the temperature hardly change which token is drawn, so a wrong rule would pass."""
    import torch

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
        model.model.norm.weight.mul_(8)
    return replace(tiny, model=model)


# each case: the kit's settings, and the transformers ``generate`` call they must equal
# ("penalty_reply_only": transformers' RepetitionPenaltyLogitsProcessor with prompt_ignore_length,
# transformers' own way to leave the prompt out of the penalty)
CASES = {
    "greedy": ({"greedy": True, "repetition_penalty": 1.0}, {"do_sample": False}),
    "greedy, penalty 1.3": ({"greedy": True, "repetition_penalty": 1.3},
                            {"do_sample": False, "penalty_reply_only": 1.3}),
    "temperature 0 is greedy": ({"temperature": 0.0, "repetition_penalty": 1.0}, {"do_sample": False}),
    "temperature 0.7": ({"temperature": 0.7, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0},
                        {"do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 1.0}),
    "top_k 1": ({"temperature": 1.0, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0},
                {"do_sample": True, "temperature": 1.0, "top_k": 1, "top_p": 1.0}),
    "top_k 5": ({"temperature": 1.0, "top_k": 5, "top_p": 1.0, "repetition_penalty": 1.0},
                {"do_sample": True, "temperature": 1.0, "top_k": 5, "top_p": 1.0}),
    "top_p 0": ({"temperature": 1.0, "top_k": 0, "top_p": 0.0, "repetition_penalty": 1.0},
                {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.0}),
    "top_p 0.5": ({"temperature": 1.0, "top_k": 0, "top_p": 0.5, "repetition_penalty": 1.0},
                  {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.5}),
    "top_p 1": ({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0},
                {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}),
    "greedy, penalty 1.3, prompt too": ({"greedy": True, "repetition_penalty": 1.3, "penalize_prompt": True},
                                        {"do_sample": False, "repetition_penalty": 1.3}),
    # temperature 0.5: draws sensitive enough that the prompt's penalty changes them
    "penalty 1.3, reply only": ({"temperature": 0.5, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.3},
                                {"do_sample": True, "temperature": 0.5, "top_k": 0, "top_p": 1.0,
                                 "penalty_reply_only": 1.3}),
    "penalty 1.3, prompt too": ({"temperature": 0.5, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.3,
                                 "penalize_prompt": True},
                                {"do_sample": True, "temperature": 0.5, "top_k": 0, "top_p": 1.0,
                                 "repetition_penalty": 1.3}),
    "Qwen2.5's defaults": ({}, {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
                                "penalty_reply_only": 1.05}),
    "temperature 1.5, top_k 50, top_p 0.9": ({"temperature": 1.5, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.0},
                                             {"do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.9}),
    "everything, prompt too": ({"temperature": 0.7, "top_k": 5, "top_p": 0.5, "repetition_penalty": 1.3,
                                "penalize_prompt": True},
                               {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.5,
                                "repetition_penalty": 1.3}),
}
SEEDS = (11, 12, 13)


def transformers_generate(model, prompt: list[int], seed: int, call: dict) -> list[int]:
    """transformers' own generate: the reference."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    call = dict(call)
    kwargs = {"temperature": None, "top_k": None, "top_p": None, "repetition_penalty": None}  # not the model's
    if "penalty_reply_only" in call:
        kwargs["logits_processor"] = [RepetitionPenaltyLogitsProcessor(call.pop("penalty_reply_only"),
                                                                       prompt_ignore_length=len(prompt))]
    kwargs.update(call)
    torch.manual_seed(seed)
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=N, eos_token_id=NEVER, pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


def question(tok, i: int) -> list[int]:
    return tok(f"<|im_start|>user\nquestion {i}: " + "tell me more about the library " * (i + 1)
               + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def batcher(peaked):
    b = ContinuousBatcher(peaked.model, peaked.tokenizer, [], max_batch=3)
    yield b
    b.close()


@pytest.mark.parametrize("case", list(CASES))
def test_the_batcher_samples_as_transformers_generate(peaked, batcher, case):
    kit, call = CASES[case]
    prompts = [question(peaked.tokenizer, i) for i in range(len(SEEDS))]
    expected = [transformers_generate(peaked.model, p, seed, call) for p, seed in zip(prompts, SEEDS)]
    # together in one batch, each row with its own seed and prompt length
    requests = [batcher.submit(p, GenerationSettings(max_new_tokens=N, seed=seed, **kit))
                for p, seed in zip(prompts, SEEDS)]
    got = [[t for t in r.tokens(timeout=60) if not isinstance(t, Finished)] for r in requests]
    assert got == expected
    if kit.get("greedy") is not True and call.get("do_sample") and call.get("top_k") != 1 and call.get("top_p") != 0:
        assert len({tuple(e) for e in expected}) == len(SEEDS)  # sampling really samples here


@pytest.mark.parametrize("case", ["greedy, penalty 1.3", "temperature 0 is greedy", "top_p 0", "top_k 5", "top_p 0.5",
                                  "penalty 1.3, reply only", "penalty 1.3, prompt too", "Qwen2.5's defaults",
                                  "everything, prompt too"])
def test_the_chat_engine_samples_as_transformers_generate_on_either_backend(peaked, batcher, case):
    """The terminal's embedded model and the server's batched backend, through a real turn."""
    kit, call = CASES[case]
    settings = GenerationSettings(max_new_tokens=N, seed=21, **kit)
    texts = []
    for backend in (None, BatchedBackend(batcher, peaked.tokenizer)):
        engine = ChatEngine(peaked.model, peaked.tokenizer, settings=settings, eos_token_ids=NEVER, backend=backend)
        turn = engine.start_turn("When does the library close on Saturday?")
        texts.append(turn.run())
    prompt = peaked.tokenizer(turn.prompt, add_special_tokens=False)["input_ids"]
    expected = peaked.tokenizer.decode(transformers_generate(peaked.model, prompt, 21, call), skip_special_tokens=True)
    assert texts == [expected, expected]


@pytest.mark.parametrize("rule", ["greedy, penalty 1.3", "penalty 1.3, reply only"])
def test_the_penalty_rules_give_different_replies_here(peaked, rule):
    """So the cases above tell the reply-only penalty from the prompt-wide one."""
    other = rule.replace("reply only", "prompt too") if "reply only" in rule else f"{rule}, prompt too"
    prompts = [question(peaked.tokenizer, i) for i in range(len(SEEDS))]
    differ = [transformers_generate(peaked.model, p, seed, CASES[rule][1])
              != transformers_generate(peaked.model, p, seed, CASES[other][1]) for p, seed in zip(prompts, SEEDS)]
    assert any(differ)


def test_top_p_zero_keeps_only_the_likeliest_token(peaked, batcher):
    """top_p=0 is not "off": transformers keeps the top token (the batcher once sampled widely)."""
    p = question(peaked.tokenizer, 0)
    greedy = transformers_generate(peaked.model, p, 1, {"do_sample": False})
    for seed in SEEDS:
        r = batcher.submit(p, GenerationSettings(max_new_tokens=N, seed=seed, temperature=1.0, top_k=0, top_p=0.0,
                                                 repetition_penalty=1.0))
        assert [t for t in r.tokens(timeout=60) if not isinstance(t, Finished)] == greedy


@pytest.mark.parametrize("field, value", [("temperature", -0.1), ("top_p", 1.5), ("top_p", -0.1), ("top_k", -1),
                                          ("repetition_penalty", 0.0), ("max_new_tokens", 0)])
def test_settings_no_backend_accepts_are_refused(batcher, field, value):
    with pytest.raises(UserError, match=field):
        batcher.submit([1, 2, 3], GenerationSettings(**{field: value}))


def test_the_terminal_refuses_bad_settings_before_loading_a_model():
    from tests.conftest import run_script

    res = run_script("chat.py", "--model", "demo", "--top-p", "1.5", timeout=120)
    err = res.stderr.decode()
    assert res.returncode == 2 and "top_p must be between 0 and 1" in err and "Traceback" not in err


# -- remote backends: the same settings, in the form their APIs take ------------------------------

def openai_body(**settings) -> dict:
    backend = OpenAIBackend.__new__(OpenAIBackend)
    backend.model = "m"
    return backend.body([{"role": "user", "content": "hi"}], GenerationSettings(**settings), [])


def test_the_openai_backend_sends_top_k_and_the_repetition_penalty():
    body = openai_body(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05, seed=3, max_new_tokens=9)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "max_tokens")} == \
        {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "seed": 3, "max_tokens": 9}
    # greedy keeps its penalty (the kit's rule applies the penalty to greedy replies too)
    body = openai_body(greedy=True, repetition_penalty=1.3)
    assert body["temperature"] == 0 and body["repetition_penalty"] == 1.3 and "top_k" not in body


@pytest.mark.parametrize("settings", [{"greedy": True}, {"temperature": 0.0}, {"top_p": 0.0}, {"top_k": 1}])
def test_every_way_of_asking_for_the_likeliest_token_is_temperature_0_remotely(settings):
    body = openai_body(**settings)
    assert body["temperature"] == 0 and "top_p" not in body and "top_k" not in body  # servers refuse top_p=0


def test_fields_that_change_nothing_are_not_sent():
    """api.openai.com refuses fields it does not know: with top-k off and no penalty, none is sent."""
    body = openai_body(top_k=0, repetition_penalty=1.0)
    assert "top_k" not in body and "repetition_penalty" not in body


def test_vllm_sampling_params_follow_the_kits_settings():
    assert sampling_params(GenerationSettings(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05, seed=5,
                                              max_new_tokens=9), ["###"]) == \
        {"max_tokens": 9, "stop": ["###"], "seed": 5, "repetition_penalty": 1.05, "ignore_eos": False,
         "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert sampling_params(GenerationSettings(top_k=0), [])["top_k"] == -1  # off: vLLM's -1
    for greedy in ({"greedy": True}, {"top_p": 0.0}, {"top_k": 1}, {"temperature": 0.0}):
        args = sampling_params(GenerationSettings(repetition_penalty=1.2, **greedy), [])
        assert (args["temperature"], args["top_p"], args["top_k"], args["repetition_penalty"]) == (0.0, 1.0, -1, 1.2)
    assert sampling_params(GenerationSettings(ignore_eos=True), [])["ignore_eos"] is True
    assert sampling_params(GenerationSettings(), [])["stop"] is None



@pytest.mark.parametrize("batched", [False, True])
def test_ignore_eos_runs_to_max_new_tokens_on_either_backend(peaked, batched):
    """Benchmarks ask every backend for exactly max_new_tokens with ignore_eos."""
    first = ChatEngine(peaked.model, peaked.tokenizer, settings=GenerationSettings(max_new_tokens=4, greedy=True),
                       eos_token_ids=NEVER)
    turn = first.start_turn("hello")
    turn.run()
    end_id = turn.stats.last_token_id  # a token the greedy reply produces: made the end id below
    own = ContinuousBatcher(peaked.model, peaked.tokenizer, [end_id], max_batch=2) if batched else None
    try:
        for ignore_eos, reason in ((False, "stop"), (True, "length")):
            engine = ChatEngine(peaked.model, peaked.tokenizer, eos_token_ids=[end_id],
                                backend=BatchedBackend(own, peaked.tokenizer) if batched else None,
                                settings=GenerationSettings(max_new_tokens=12, greedy=True, ignore_eos=ignore_eos))
            turn = engine.start_turn("hello")
            turn.run()
            assert turn.stats.finish_reason == reason
            assert (turn.stats.new_tokens == 12) == ignore_eos
    finally:
        if own is not None:
            own.close()
