"""Rendering and label masks, checked token by token on the tiny model's real Qwen2.5 template."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qwen_kit.data.pack import SFTCollator, SFTDataset, pack_examples
from qwen_kit.data.prepare import prepare_data
from qwen_kit.data.render import IGNORE, RenderOptions, render_text

CONVERSATIONS = {
    "english": [{"role": "user", "content": "Give three tips for staying healthy."},
                {"role": "assistant", "content": "Eat well, sleep enough and exercise."}],
    "chinese": [{"role": "user", "content": "北京是哪个国家的首都？"},
                {"role": "assistant", "content": "北京是中国的首都。"}],
    "multi-turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "My name is Alice."},
                   {"role": "assistant", "content": "Hello Alice!"},
                   {"role": "user", "content": "我住在杭州。"},
                   {"role": "assistant", "content": "杭州很美。"}],
}


def _prepare(tmp_path, tok, rows, **opts):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}, ensure_ascii=False) for m in rows), encoding="utf-8")
    return prepare_data(str(path), tok, RenderOptions(**opts), cache_dir=None, progress=False)


def _expected_targets(tok, messages):
    """Independently of the implementation: the assistant contents plus <|im_end|>, in order."""
    return "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_response_loss_targets_exactly_the_assistant_text_and_its_end_token(tiny, tmp_path, name):
    messages = CONVERSATIONS[name]
    data = _prepare(tmp_path, tiny.tokenizer, [messages], loss="response")
    ids, labels = data.input_ids[0], data.labels[0]
    targets = [int(t) for t, lab in zip(ids, labels) if lab != IGNORE]
    assert tiny.tokenizer.decode(targets) == _expected_targets(tiny.tokenizer, messages)
    assert targets[-1] == tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")  # the model learns to stop
    # every masked token is really outside the assistant replies: user and system text never leak in
    masked_text = tiny.tokenizer.decode([int(t) for t, lab in zip(ids, labels) if lab == IGNORE])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in masked_text


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_full_loss_targets_every_token_but_the_first(tiny, tmp_path, name):
    data = _prepare(tmp_path, tiny.tokenizer, [CONVERSATIONS[name]], loss="full")
    labels, ids = data.labels[0], data.input_ids[0]
    assert labels[0] == IGNORE and np.array_equal(labels[1:], ids[1:])


def test_no_system_prompt_renders_no_system_block(tiny):
    msgs = CONVERSATIONS["multi-turn"]
    text = render_text(tiny.tokenizer, [m for m in msgs if m["role"] != "system"], no_system=True)
    assert "system" not in text and "You are Qwen" not in text
    assert text.startswith("<|im_start|>user\nMy name is Alice.<|im_end|>\n")
    default = render_text(tiny.tokenizer, msgs[1:], no_system=False)  # Qwen injects its own otherwise
    assert "You are Qwen, created by Alibaba Cloud" in default


def test_system_prompt_option_and_no_system_option(tiny, tmp_path):
    rows = [CONVERSATIONS["english"]]
    custom = _prepare(tmp_path, tiny.tokenizer, rows, system_prompt="You are a nurse.")
    none = _prepare(tmp_path, tiny.tokenizer, rows, no_system_prompt=True)
    assert "You are a nurse." in tiny.tokenizer.decode(custom.input_ids[0])
    assert "system" not in tiny.tokenizer.decode(none.input_ids[0])


def test_a_packed_example_gets_the_same_logits_as_alone(tiny, tmp_path):
    rows = [CONVERSATIONS[k] for k in CONVERSATIONS]
    data = _prepare(tmp_path, tiny.tokenizer, rows)
    ds = SFTDataset(data.input_ids, data.labels, packed=True, max_len=4096)
    assert len(ds) == 1  # all three share one bin
    batch = SFTCollator(True, 0)([ds[0]])
    model = tiny.model
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for i in ds.items[0]:
            ids = torch.from_numpy(data.input_ids[i].astype(np.int64))[None]
            alone = model(input_ids=ids, use_cache=False).logits[0]
            assert torch.allclose(packed[offset: offset + ids.shape[1]], alone, atol=1e-5)
            offset += ids.shape[1]


def test_packing_fills_bins_without_exceeding_them():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 900, size=2000).tolist()
    bins = pack_examples(lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert max(loads) <= 2048
    assert sum(lengths) / (len(bins) * 2048) > 0.95  # bins are nearly full


def test_tokenization_is_cached_and_reused(tiny, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}] * 5))
    first = prepare_data(str(path), tiny.tokenizer, RenderOptions(), cache_dir=tmp_path / "c", progress=False)
    again = prepare_data(str(path), tiny.tokenizer, RenderOptions(), cache_dir=tmp_path / "c", progress=False)
    other = prepare_data(str(path), tiny.tokenizer, RenderOptions(loss="full"), cache_dir=tmp_path / "c", progress=False)
    assert not first.stats["cached"] and again.stats["cached"] and not other.stats["cached"]
    assert all(np.array_equal(a, b) for a, b in zip(first.labels, again.labels))
