"""The continuous batcher on the tiny Qwen2: rows that join and leave a running batch get the
tokens they would get alone. Seeded sampling at temperature 1 makes every token depend on
the exact logits (a random model's greedy reply is one token repeated, which hides errors)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from qwen_kit.serve.batching import ContinuousBatcher, Finished, Sampling


@pytest.fixture(scope="module")
def sharp(tiny):
    """The tiny model with query and key weights scaled up: a random model's attention is
    almost uniform, so a wrong position or mask would hardly change its logits; sharpened,
    every token depends on where it is and what it may see."""
    import copy

    import torch

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return replace(tiny, model=model)


def sampled(seed: int) -> Sampling:
    return Sampling(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3, seed=seed, penalize_prompt=True)


def run(req):
    items = list(req.tokens(timeout=120))
    return [t for t in items if not isinstance(t, Finished)], items[-1]


def prompts(tok, n):
    return [tok(f"<|im_start|>user\nquestion {i}: " + "tell me more " * (i * 3) + "<|im_end|>\n<|im_start|>assistant\n",
                add_special_tokens=False)["input_ids"] for i in range(n)]


def generate_alone(model, prompt, n, seed):
    """transformers' own generate, one request, the same seed and processors."""
    import torch

    torch.manual_seed(seed)
    out = model.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3,
                              max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_rows_joining_and_leaving_get_what_they_get_alone(sharp):
    batcher = ContinuousBatcher(sharp.model, sharp.tokenizer, [], max_batch=3)
    try:
        ps = prompts(sharp.tokenizer, 6)
        lengths = [5, 30, 12, 25, 8, 18]  # rows finish at different steps; waiting ones take their slots
        alone = [generate_alone(sharp, p, n, i) for i, (p, n) in enumerate(zip(ps, lengths))]
        assert [run(batcher.submit(p, n, sampled(i)))[0] for i, (p, n) in enumerate(zip(ps, lengths))] == alone
        assert len({tuple(a[:5]) for a in alone}) == 6  # six different replies
        results = [None] * 6

        def go(i):
            time.sleep(0.01 * i)  # they arrive while others are being generated
            results[i] = run(batcher.submit(ps[i], lengths[i], sampled(i)))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert [r[0] for r in results] == alone
        assert [r[1].reason for r in results] == ["length"] * 6
        assert [r[1].new_tokens for r in results] == lengths
        assert batcher.largest_batch == 3
    finally:
        batcher.close()


def test_end_ids_stop_a_row_and_cancel_frees_it(sharp):
    batcher = ContinuousBatcher(sharp.model, sharp.tokenizer, [], max_batch=1)
    try:
        p = prompts(sharp.tokenizer, 1)[0]
        free, _ = run(batcher.submit(p, 10, sampled(7)))
        stop_at = free[4]
        ended, done = run(batcher.submit(p, 10, sampled(7), eos_ids=[stop_at]))
        assert ended == free[:free.index(stop_at)] and done.reason == "stop"  # the end id itself is not text
        long = batcher.submit(p, 3000, sampled(1))
        next(long.tokens(timeout=60))
        long.cancel()
        _, done = run(long)
        assert done.reason == "cancelled" and done.new_tokens < 3000
        after, done = run(batcher.submit(p, 4, sampled(2)))  # the one slot is free again
        assert done.reason == "length" and len(after) == 4
    finally:
        batcher.close()
