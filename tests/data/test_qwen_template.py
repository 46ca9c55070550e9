"""Reply-only label masks on Qwen's real tokenizer and chat template (the offline Qwen2.5-Coder-0.5B),
checked token by token against an expectation built independently of the kit: each conversation is
cut into the pieces the real template renders (apply_chat_template up to each reply), the pieces are
tokenized one by one, and the reply pieces (content + <|im_end|>) are the targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen_kit.data.prepare import prepare_data
from qwen_kit.data.render import IGNORE, RenderOptions

pytestmark = pytest.mark.qwen

QWEN_DEFAULT_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
CONVERSATIONS = {
    "default system": [{"role": "user", "content": "Give three tips for staying healthy."},
                       {"role": "assistant", "content": "Eat well, sleep enough and exercise."}],
    "chinese": [{"role": "user", "content": "北京是哪个国家的首都？"},
                {"role": "assistant", "content": "北京是中国的首都。"}],
    "multi-turn with system": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "My name is Alice."},
                               {"role": "assistant", "content": "Hello Alice!"},
                               {"role": "user", "content": "我住在杭州。"},
                               {"role": "assistant", "content": "杭州很美，西湖尤其有名。\n祝你愉快！"}],
}


def _pieces(tok, messages, no_system: bool) -> list[tuple[str, bool]]:
    """(text, is_target) pieces of the real template's rendering, in order."""
    render = lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    strip = (lambda t: t.replace(QWEN_DEFAULT_SYSTEM, "", 1)) if no_system else (lambda t: t)
    full = strip(render(messages, False))
    pieces, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = strip(render(messages[:i], True))
        target = m["content"] + "<|im_end|>"
        assert prefix.startswith(done) and full.startswith(prefix + target)
        pieces += [(prefix[len(done):], False), (target, True)]
        done = prefix + target
    return pieces + [(full[len(done):], False)]


def _expected(tok, messages, no_system=False):
    ids, labels = [], []
    for text, is_target in _pieces(tok, messages, no_system):
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if is_target else [IGNORE] * len(piece)
    labels[0] = IGNORE
    return np.array(ids), np.array(labels)


def _prepare(tmp_path, tok, messages, **opts):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"messages": messages}, ensure_ascii=False) + "\n", encoding="utf-8")
    data = prepare_data(str(path), tok, RenderOptions(**opts), cache_dir=None, progress=False)
    return np.asarray(data.input_ids[0]), np.asarray(data.labels[0])


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_reply_only_labels_match_the_real_template_token_by_token(qwen_tokenizer, tmp_path, name):
    messages = CONVERSATIONS[name]
    ids, labels = _prepare(tmp_path, qwen_tokenizer, messages)
    want_ids, want_labels = _expected(qwen_tokenizer, messages)
    assert ids.tolist() == want_ids.tolist()
    assert labels.tolist() == want_labels.tolist()
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (labels == im_end).sum() == sum(m["role"] == "assistant" for m in messages)  # each reply learns to stop
    if name != "multi-turn with system":
        assert qwen_tokenizer.decode(ids).startswith(QWEN_DEFAULT_SYSTEM)  # Qwen's default system prompt


def test_no_system_render_has_no_system_block_and_the_same_reply_labels(qwen_tokenizer, tmp_path):
    messages = CONVERSATIONS["multi-turn with system"]
    ids, labels = _prepare(tmp_path, qwen_tokenizer, messages, no_system_prompt=True)
    without = [m for m in messages if m["role"] != "system"]
    want_ids, want_labels = _expected(qwen_tokenizer, without, no_system=True)
    assert ids.tolist() == want_ids.tolist() and labels.tolist() == want_labels.tolist()
    text = qwen_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nMy name is Alice.") and "system" not in text
    assert "Be brief." not in text and "You are Qwen" not in text
