"""The Modelfile beside an export: ollama's TEMPLATE renders what the HF chat template renders."""

from __future__ import annotations

import re

import pytest

from qwen_kit.errors import UserError
from qwen_kit.export.ollama import chatml_default_system, write_modelfile

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CONVERSATION = [{"role": "system", "content": "你是图书馆的助手。Answer briefly."},
                {"role": "user", "content": "When does the library open on Saturday?"},
                {"role": "assistant", "content": "周六上午九点开门。"},
                {"role": "user", "content": "And on Sunday?\nPlease answer in English."}]


def render_go_template(template: str, values: dict) -> str:
    """A renderer for the Go text/template subset the kit emits: {{ .Field }}, if / range / end,
    `ne A "b"`, and the {{- -}} whitespace trims."""
    parts = re.split(r"({{-? .*? -?}})", template)
    for i, part in enumerate(parts):  # apply trims to the neighbouring text, as Go does
        if part.startswith("{{- "):
            parts[i - 1] = parts[i - 1].rstrip()
        if part.endswith(" -}}"):
            parts[i + 1] = parts[i + 1].lstrip()

    def parse(pos: int) -> tuple[list, int]:
        nodes: list = []
        while pos < len(parts):
            part = parts[pos]
            if not part.startswith("{{"):
                nodes.append(("text", part))
                pos += 1
                continue
            action = part.strip("{}").strip("-").strip()
            if action == "end":
                return nodes, pos + 1
            if action.startswith(("if ", "range ")):
                keyword, arg = action.split(" ", 1)
                body, pos = parse(pos + 1)
                nodes.append((keyword, arg, body))
                continue
            nodes.append(("value", action))
            pos += 1
        return nodes, pos

    def value(expr: str, dot: dict):
        if expr.startswith("ne "):
            left, right = expr[3:].split(" ", 1)
            return value(left, dot) != right.strip('"')
        if expr.startswith("."):
            return dot[expr[1:]]  # as in Go: inside range, "." is the element
        raise AssertionError(f"the renderer does not know {expr!r}: the Modelfile uses more than the tested subset")

    def run(nodes: list, dot: dict) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "value":
                out.append(str(value(node[1], dot)))
            elif node[0] == "if":
                out.append(run(node[2], dot) if value(node[1], dot) else "")
            else:
                out += [run(node[2], item) for item in value(node[1], dot)]
        return "".join(out)

    tree, _ = parse(0)
    return run(tree, values)


def ollama_render(modelfile: str, messages: list[dict]) -> str:
    """What ollama renders for a /api/chat request: SYSTEM becomes a system message when the request
    has none; .System is every system message's content, .Messages every message."""
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', modelfile, re.S)
    if messages[0]["role"] != "system" and system:
        messages = [{"role": "system", "content": system.group(1)}] + messages
    joined = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    listed = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return render_go_template(template, {"System": joined, "Messages": listed})


def parameters(modelfile: str) -> list[tuple[str, str]]:
    return re.findall(r"^PARAMETER (\S+) (.+)$", modelfile, re.M)


@pytest.fixture(scope="module")
def tiny_modelfile(tiny_qwen_dir, tmp_path_factory):
    path = write_modelfile(tiny_qwen_dir, tmp_path_factory.mktemp("ollama") / "tiny-f16.gguf")
    return path.read_text(encoding="utf-8")


def test_renderer_follows_go_trim_rules():
    assert render_go_template("a  {{- .X -}}  b\n{{ if .Y }}y{{ end }}", {"X": 1, "Y": ""}) == "a1b\n"


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:]], ids=["system+two-turns", "two-turns-default-system"])
def test_modelfile_template_renders_the_hf_chat_template(tiny_modelfile, tiny, messages):
    expected = tiny.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ollama_render(tiny_modelfile, messages) == expected


def test_modelfile_carries_qwen_default_system_stops_and_sampling(tiny_modelfile, tiny_qwen_dir):
    assert f'SYSTEM """{QWEN_SYSTEM}"""' in tiny_modelfile
    assert tiny_modelfile.startswith("FROM ./tiny-f16.gguf\n")
    assert parameters(tiny_modelfile) == [("stop", '"<|im_end|>"'), ("stop", '"<|endoftext|>"'), ("temperature", "0.7"),
                                          ("top_p", "0.8"), ("top_k", "20"), ("repeat_penalty", "1.05")]


def test_template_without_default_system_gets_no_system_line(tiny):
    import copy

    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    assert chatml_default_system(tokenizer) is None


def test_non_chatml_template_is_refused(tiny):
    import copy

    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    with pytest.raises(UserError, match="not ChatML"):
        chatml_default_system(tokenizer)


@pytest.mark.slow
def test_demo_modelfile_renders_the_demo_chat_template(demo, tmp_path):
    modelfile = write_modelfile(demo.ref.path, tmp_path / "demo-f16.gguf").read_text(encoding="utf-8")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    for messages in (CONVERSATION, CONVERSATION[1:]):
        expected = demo.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ollama_render(modelfile, messages) == expected
