"""The continuous batcher on the tiny Qwen2: rows that join and leave a running batch get the
tokens they would get alone. Seeded sampling at temperature 1 makes every token depend on
the exact logits (a random model's greedy reply is one token repeated, which hides errors)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from qwen_kit.generation.sampling import GenerationSettings
from qwen_kit.generation.batching import BatchingStopped, ContinuousBatcher, Finished


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


def sampled(seed: int, n: int) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3, seed=seed,
                              penalize_prompt=True)


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
        assert [run(batcher.submit(p, sampled(i, n)))[0] for i, (p, n) in enumerate(zip(ps, lengths))] == alone
        assert len({tuple(a[:5]) for a in alone}) == 6  # six different replies
        results = [None] * 6

        def go(i):
            time.sleep(0.01 * i)  # they arrive while others are being generated
            results[i] = run(batcher.submit(ps[i], sampled(i, lengths[i])))

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
        free, _ = run(batcher.submit(p, sampled(7, 10)))
        stop_at = free[4]
        ended, done = run(batcher.submit(p, sampled(7, 10), eos_ids=[stop_at]))
        assert ended == free[:free.index(stop_at)] and done.reason == "stop"  # the end id itself is not text
        long = batcher.submit(p, sampled(1, 3000))
        next(long.tokens(timeout=60))
        long.cancel()
        _, done = run(long)
        assert done.reason == "cancelled" and done.new_tokens < 3000
        after, done = run(batcher.submit(p, sampled(2, 4)))  # the one slot is free again
        assert done.reason == "length" and len(after) == 4
    finally:
        batcher.close()


# -- every admitted request ends with exactly one Finished ---------------------------------------

class PrefillFails:
    """The model, except that the prefill of a batch holding a prompt of ``length`` tokens
    raises as CUDA does when a long batched prefill runs out of memory (``times`` times)."""

    def __init__(self, model, length: int, times: int = 1):
        import inspect

        self.model, self.length, self.left = model, length, times
        self.config, self.device = model.config, model.device
        self.forward = lambda **kw: self._forward(**kw)
        self.forward.__signature__ = inspect.signature(model.forward)  # the batcher reads its arguments
        self.failed = 0

    def _forward(self, **kw):
        mask = kw["attention_mask"]
        if self.left and kw["input_ids"].shape[1] > 1 and self.length in mask.sum(-1).tolist():
            self.left -= 1
            self.failed += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return self.model(**kw)

    def __call__(self, **kw):
        return self._forward(**kw)


def ends(req, timeout=60):
    """Every item of the request's stream, up to and including its Finished, and checks that
    nothing follows it (exactly one Finished)."""
    items = list(req.tokens(timeout=timeout))
    assert sum(isinstance(i, Finished) for i in items) == 1 and req._out.empty()
    return [t for t in items if not isinstance(t, Finished)], items[-1]


def test_a_failed_prefill_fails_only_the_requests_it_was_admitting(sharp):
    tok = sharp.tokenizer
    ps = prompts(tok, 4)
    bad = ps[3]
    model = PrefillFails(sharp.model, len(bad))
    batcher = ContinuousBatcher(model, tok, [], max_batch=4)
    try:
        running = batcher.submit(ps[0], sampled(0, 40))
        stream = running.tokens(timeout=60)
        first = next(stream)
        failing = batcher.submit(bad, sampled(3, 10))
        _, done = ends(failing, timeout=30)  # before the fix: never ends
        assert done.reason == "error" and "out of memory" in done.error and model.failed == 1
        rest = [t for t in stream]
        assert rest[-1].reason == "length"  # the running row went on, untouched
        assert [first] + rest[:-1] == generate_alone(sharp, ps[0], 40, 0)
        again, done = ends(batcher.submit(bad, sampled(3, 6)))  # the batcher still serves
        assert done.reason == "length" and again == generate_alone(sharp, bad, 6, 3)
    finally:
        batcher.close()


def test_a_request_cancelled_while_waiting_ends_at_once(sharp):
    batcher = ContinuousBatcher(sharp.model, sharp.tokenizer, [], max_batch=1, max_context=40000)
    try:
        p = prompts(sharp.tokenizer, 1)[0]
        busy = batcher.submit(p, sampled(1, 30000))  # holds the only slot for minutes
        next(busy.tokens(timeout=60))
        waiting = batcher.submit(p, sampled(2, 5))
        waiting.cancel()
        start = time.perf_counter()
        _, done = ends(waiting, timeout=20)  # before the fix: only when `busy` ends
        assert done.reason == "cancelled" and done.new_tokens == 0 and time.perf_counter() - start < 10
        assert batcher.waiting == 0 and batcher.active == 1
        busy.cancel()
        assert ends(busy)[1].reason == "cancelled"
    finally:
        batcher.close()


def test_close_ends_every_running_and_waiting_request(sharp):
    batcher = ContinuousBatcher(sharp.model, sharp.tokenizer, [], max_batch=2, max_context=40000)
    p = prompts(sharp.tokenizer, 1)[0]
    running = [batcher.submit(p, sampled(i, 30000)) for i in range(2)]
    for r in running:
        next(r.tokens(timeout=60))
    waiting = [batcher.submit(p, sampled(i, 5)) for i in range(3)]
    batcher.close()
    assert [ends(r, timeout=5)[1].reason for r in running + waiting] == ["cancelled"] * 5
    with pytest.raises(BatchingStopped):
        batcher.submit(p, sampled(0, 5))


def test_submitting_while_closing_never_leaves_a_request_without_an_end(sharp):
    """Clients keep submitting while the server shuts down: each submit either raises
    BatchingStopped or gets exactly one Finished."""
    p = prompts(sharp.tokenizer, 1)[0]
    for attempt in range(3):
        batcher = ContinuousBatcher(sharp.model, sharp.tokenizer, [], max_batch=2)
        taken, refused = [], []

        def client():
            deadline = time.perf_counter() + 10
            while time.perf_counter() < deadline:  # until the batcher refuses
                try:
                    taken.append(batcher.submit(p, sampled(0, 3)))
                except BatchingStopped:
                    refused.append(1)
                    return
                time.sleep(0.001)

        threads = [threading.Thread(target=client) for _ in range(3)]
        [t.start() for t in threads]
        time.sleep(0.02 * (attempt + 1))
        batcher.close()
        [t.join() for t in threads]
        assert len(refused) == 3
        for r in taken:
            ends(r, timeout=10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death is the point
def test_backend_generate_returns_whatever_happens_to_the_scheduler(sharp):
    """BatchedBackend.generate never waits for ever: if the scheduler thread dies (here from an
    exception no handler catches), the turn fails instead of polling."""
    from qwen_kit.generation.backends import BatchedBackend
    from qwen_kit.chat.engine import GenerationFailed, GenerationSettings, TurnStats

    class Dies(PrefillFails):
        def _forward(self, **kw):
            raise SystemExit("the scheduler thread ends")

    batcher = ContinuousBatcher(Dies(sharp.model, 0), sharp.tokenizer, [], max_batch=2)
    backend = BatchedBackend(batcher, sharp.tokenizer)
    result = []

    def turn():
        try:
            backend.generate("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", [],
                             GenerationSettings(max_new_tokens=5), [], threading.Event(), lambda _: None, TurnStats())
        except GenerationFailed as err:
            result.append(err)

    thread = threading.Thread(target=turn, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "generate polled for ever after the scheduler died"
    assert result and "stopped" in str(result[0])
    batcher.close()


def test_every_request_gets_exactly_one_finished_whatever_happens(sharp):
    """The invariant, under load: many requests of random lengths and settings, random cancels
    (waiting, running, finished), one prefill that runs out of memory; each request ends once,
    and in bounded time; requests left waiting when the batcher closes end too."""
    import random

    rng = random.Random(5)
    tok = sharp.tokenizer
    ps = prompts(tok, 8)
    model = PrefillFails(sharp.model, len(ps[7]))
    batcher = ContinuousBatcher(model, tok, [], max_batch=3)
    requests, cancels = [], []
    start = time.perf_counter()
    for i in range(30):
        n = rng.randint(1, 25)
        settings = sampled(i, n) if i % 2 else GenerationSettings(max_new_tokens=n, greedy=True, repetition_penalty=1.1)
        requests.append(batcher.submit(ps[rng.randrange(8)], settings))
        if rng.random() < 0.3:
            cancels.append(threading.Timer(rng.random() * 0.3, requests[-1].cancel))
            cancels[-1].start()
        time.sleep(rng.random() * 0.02)
    results = [ends(r, timeout=60)[1] for r in requests]
    assert time.perf_counter() - start < 60
    reasons = {r.reason for r in results}
    assert model.failed == 1 and "error" in reasons and "length" in reasons and "cancelled" in reasons
    assert all(r.error and "out of memory" in r.error for r in results if r.reason == "error")
    # the same once more, closing while requests still wait: they end too
    late = [batcher.submit(ps[rng.randrange(8)], sampled(i, 20)) for i in range(10)]
    batcher.close()
    assert all(ends(r, timeout=10)[1].reason in ("cancelled", "length") for r in late)
    [t.cancel() for t in cancels]
