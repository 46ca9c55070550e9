"""The ollama Modelfile written beside an exported GGUF file.

ollama renders prompts with a Go template, not the model's Jinja chat template, so the Modelfile
carries a TEMPLATE of its own. The kit writes one only for ChatML chat templates (Qwen2.5,
SmolLM2), after checking by rendering that the Jinja template really is ChatML, and reads the
default system prompt the template injects (Qwen2.5's "You are Qwen, ...") from a render of a
conversation without one: ollama adds SYSTEM as a system message when a request has none.
The stop tokens are the model's reply-end tokens; the sampling defaults come from
``generation_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwen_kit.errors import UserError

# ollama gives the template .System (the system messages, or SYSTEM when a request has none) and
# .Messages (every message, system ones included, so they are skipped in the loop).
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
# generation_config.json field -> ollama PARAMETER
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}


def chatml(messages: list[dict[str, str]]) -> str:
    """ChatML for ``messages`` followed by the assistant's turn, as ollama's TEMPLATE renders it."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def chatml_default_system(tokenizer: Any) -> str | None:
    """The system prompt the tokenizer's chat template injects when none is given (None: none).

    Raises:
        UserError: the template does not render ChatML, so no equivalent TEMPLATE can be written.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise UserError("the tokenizer has no chat template; the Modelfile's TEMPLATE is written from it "
                        "(pass --no-modelfile to export the GGUF file alone)")
    turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    render = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    if render != chatml(turns):
        raise UserError("the chat template is not ChatML (<|im_start|>role ... <|im_end|>); the Modelfile's TEMPLATE "
                        "is written for ChatML templates only (pass --no-modelfile to export the GGUF file alone)")
    bare = tokenizer.apply_chat_template(turns[1:], tokenize=False, add_generation_prompt=True)
    if bare == chatml(turns[1:]):
        return None
    head, tail = "<|im_start|>system\n", "<|im_end|>\n" + chatml(turns[1:])
    if not (bare.startswith(head) and bare.endswith(tail)):
        raise UserError("the chat template adds something other than a system message when none is given; "
                        "pass --no-modelfile to export the GGUF file alone")
    return bare[len(head):-len(tail)]


def _quote(value: str) -> str:
    # a Modelfile value in triple quotes may hold newlines and single quotes, not three in a row
    if '"""' in value:
        raise UserError(f'cannot write {value!r} into a Modelfile (it contains """)')
    return f'"""{value}"""'


def modelfile_text(gguf_name: str, default_system: str | None, stops: list[str], sampling: dict[str, Any]) -> str:
    """The Modelfile for the GGUF file ``gguf_name`` (a path relative to the Modelfile)."""
    lines = [f"FROM ./{gguf_name}", "", f"TEMPLATE {_quote(CHATML_TEMPLATE)}"]
    if default_system is not None:
        lines.append(f"SYSTEM {_quote(default_system)}")
    lines.append("")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {name} {value}" for name, value in sampling.items()]
    return "\n".join(lines) + "\n"


def sampling_defaults(generation: dict[str, Any]) -> dict[str, Any]:
    """ollama PARAMETERs for the sampling in ``generation_config.json`` (greedy: temperature 0)."""
    if not generation.get("do_sample", False):
        return {"temperature": 0}
    return {param: generation[key] for key, param in SAMPLING.items() if generation.get(key) is not None}


def write_modelfile(folder: str | Path, gguf_path: str | Path) -> Path:
    """Write ``<gguf stem>.Modelfile`` beside ``gguf_path`` for the model folder ``folder``.

    Raises:
        UserError: the chat template is not ChatML.
    """
    from transformers import AutoTokenizer, GenerationConfig

    from qwen_kit.model.portable import reply_end_ids

    folder, gguf_path = Path(folder), Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    system = chatml_default_system(tokenizer)
    generation = {}
    if (folder / "generation_config.json").is_file():
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    config = GenerationConfig.from_pretrained(folder) if generation else GenerationConfig()
    holder = type("Gen", (), {"generation_config": config})()
    stops = [tokenizer.convert_ids_to_tokens(i) for i in reply_end_ids(holder, tokenizer)]
    target = gguf_path.with_suffix(".Modelfile")
    target.write_text(modelfile_text(gguf_path.name, system, stops, sampling_defaults(generation)), encoding="utf-8")
    return target
