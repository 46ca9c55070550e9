"""Generation backends: where a prepared prompt becomes text.

The chat pipeline (prompt, knowledge, persona, memory: :class:`~qwen_kit.chat.engine.ChatEngine`)
is the same whichever backend answers:

- no backend (``ChatEngine.backend is None``): the embedded model, one reply at a time
  (the terminal chat; the fastest path for one person);
- :class:`BatchedBackend`: the embedded model through the continuous batcher, so many
  conversations generate together (the API server and the web page);
- :class:`OpenAIBackend`: any OpenAI-compatible server (vLLM, SGLang, ollama, llama.cpp, a
  cloud API, or the kit's own server); the kit keeps retrieval, persona and memory local and
  sends the finished messages;
- :class:`qwen_kit.generation.vllm.VLLMBackend`: vLLM's engine in this process (GPU);
- :class:`qwen_kit.generation.llamacpp.LlamaCppBackend`: a GGUF file in llama.cpp in this process (CPU).

Every backend has one method, :meth:`generate`, which blocks until the reply ends, hands text
pieces to ``on_piece``, honours stop strings and the ``stopped`` flag, fills ``stats`` and
returns the finish reason ("stop", "length" or "cancelled").
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any, Callable

from qwen_kit.errors import UserError
from qwen_kit.generation.base import GenerationFailed, StopFilter, TurnStats
from qwen_kit.generation.batching import ContinuousBatcher, Finished
from qwen_kit.generation.detokenize import IncrementalDecoder
from qwen_kit.generation.sampling import GenerationSettings


class BatchedBackend:
    """The embedded model behind the continuous batcher (:mod:`qwen_kit.generation.batching`)."""

    name = "transformers"

    def __init__(self, batcher: Any, tokenizer: Any):
        self.batcher, self.tokenizer = batcher, tokenizer

    @classmethod
    def for_model(cls, loaded: Any, max_batch: int = 8, max_context: int = 4096) -> "BatchedBackend":
        return cls(ContinuousBatcher(loaded.model, loaded.tokenizer, loaded.eos_token_ids, max_batch=max_batch,
                                     max_context=max_context), loaded.tokenizer)

    def generate(self, prompt: str, messages: list[dict[str, str]], settings: GenerationSettings, stop: list[str],
                 stopped: threading.Event, on_piece: Callable[[str], None], stats: Any) -> str:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        request = self.batcher.submit(ids, settings)
        decoder, sink = IncrementalDecoder(self.tokenizer), StopFilter(stop, on_piece)
        start = time.perf_counter()
        while True:
            try:
                item = request._out.get(timeout=0.05)
            except queue.Empty:
                if stopped.is_set():
                    request.cancel()
                # the batcher ends every request it holds, even when its thread dies; this is the
                # last guard against waiting for ever (a thread killed outside Python's control)
                if not self.batcher.running and request._out.empty() and not request.ended:
                    raise GenerationFailed("generation failed: the generation engine stopped") from None
                continue
            if isinstance(item, Finished):
                break
            if stats.first_token_s is None:
                stats.first_token_s = time.perf_counter() - start
            stats.new_tokens += 1
            stats.last_token_id = item
            if stopped.is_set() or sink.hit:
                request.cancel()
                continue
            sink.feed(decoder.add(item))
            if sink.hit:
                request.cancel()
        stats.total_s = time.perf_counter() - start
        if item.reason == "error":
            raise GenerationFailed(item.error or "generation failed")
        if sink.hit:
            return "stop"
        if item.reason != "cancelled":
            sink.feed(decoder.flush())
        sink.flush()
        if item.reason == "stop":
            stats.stopped_at_eos = True
        return item.reason


class EstimatingTokenizer:
    """For a remote model whose tokenizer is not on this machine: renders ChatML and counts
    about one token per 3 bytes of UTF-8 (Qwen2.5 averages ~4 bytes per token on English and
    ~3 on Chinese, so the budget errs on the safe side)."""

    eos_token_id = None
    pad_token_id = None
    unk_token_id = None

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True, **_: Any) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": [0] * ((len(text.encode("utf-8")) + 2) // 3)}

    def convert_tokens_to_ids(self, token: str) -> None:
        return None


class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` server. The key comes from
    ``OPENAI_API_KEY`` (never from the command line); none is sent when it is unset."""

    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 600):
        import os

        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {base_url}: give the server's address, such as http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.model = model or self._first_model()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _first_model(self) -> str:
        import httpx

        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=30)
        except httpx.HTTPError as err:
            raise UserError(f"cannot reach {self.base_url} ({err}); start the server or fix --base-url") from None
        if r.status_code != 200:
            raise UserError(f"{self.base_url}/models answered {r.status_code}: {_error_text(r)}; "
                            "check OPENAI_API_KEY or name the model with --api-model")
        models = r.json().get("data") or []
        if not models:
            raise UserError(f"{self.base_url}/models lists no model; name one with --api-model")
        return models[0]["id"]

    def body(self, messages: list[dict[str, str]], settings: GenerationSettings, stop: list[str]) -> dict[str, Any]:
        """The request for ``settings``. OpenAI's own fields, plus ``top_k`` and
        ``repetition_penalty`` as vLLM, SGLang and the kit's server take them; each is sent only
        when it changes something (api.openai.com refuses fields it does not know)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True},
                                "max_tokens": settings.max_new_tokens}
        if not settings.samples:  # greedy, temperature 0, top_p 0 or top_k 1: the likeliest token
            body["temperature"] = 0
        else:
            body.update(temperature=settings.temperature, top_p=settings.top_p)
            if settings.top_k > 0:
                body["top_k"] = settings.top_k
        if settings.repetition_penalty != 1.0:
            body["repetition_penalty"] = settings.repetition_penalty
        if settings.seed is not None:
            body["seed"] = settings.seed
        if stop:
            body["stop"] = stop
        if settings.ignore_eos:
            body["ignore_eos"] = True  # vLLM's and the kit's extension
        return body

    def generate(self, prompt: str, messages: list[dict[str, str]], settings: GenerationSettings, stop: list[str],
                 stopped: threading.Event, on_piece: Callable[[str], None], stats: Any) -> str:
        import httpx

        start, reason = time.perf_counter(), "stop"
        try:
            with httpx.stream("POST", f"{self.base_url}/chat/completions", json=self.body(messages, settings, stop),
                              headers=self._headers(), timeout=self.timeout) as r:
                if r.status_code != 200:
                    r.read()
                    raise GenerationFailed(f"{self.base_url} answered {r.status_code}: {_error_text(r)}")
                for line in r.iter_lines():
                    if stopped.is_set():
                        return "cancelled"
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise GenerationFailed(f"{self.base_url}: {chunk['error'].get('message', chunk['error'])}")
                    if chunk.get("usage"):
                        stats.prompt_tokens = chunk["usage"].get("prompt_tokens", stats.prompt_tokens)
                        stats.new_tokens = chunk["usage"].get("completion_tokens", stats.new_tokens)
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            if stats.first_token_s is None:
                                stats.first_token_s = time.perf_counter() - start
                            on_piece(piece)
                        reason = choice.get("finish_reason") or reason
        except httpx.HTTPError as err:
            raise GenerationFailed(f"cannot reach {self.base_url}: {err}") from None
        finally:
            stats.total_s = time.perf_counter() - start
        stats.stopped_at_eos = reason == "stop"
        return reason


def _error_text(r: Any) -> str:
    try:
        err = r.json().get("error")
        return err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        return r.text[:200]


class RemoteModel:
    """Stands where a loaded model would for ``--backend openai``: the tokenizer that measures
    the prompt budget (the model's own when ``--model`` names one on this machine, else an
    estimate) and the backend that answers."""

    model = None
    precision = None
    adapter = None

    def __init__(self, tokenizer: Any, backend: Any, name: str):
        from types import SimpleNamespace

        self.tokenizer, self.backend = tokenizer, backend
        self.ref = SimpleNamespace(name=name, path=None, source="remote")
        self.eos_token_ids: list[int] = []


def remote_model(cfg: Any) -> RemoteModel:
    """``--backend openai --base-url URL [--api-model NAME] [--model FOLDER]``."""
    import sys

    if not cfg.base_url:
        raise UserError("--backend openai needs --base-url, the server's address such as http://127.0.0.1:8000/v1")
    backend = OpenAIBackend(cfg.base_url, cfg.api_model)
    tokenizer: Any = None
    if cfg.model:
        from transformers import AutoTokenizer

        from qwen_kit.model.resolve import resolve_model

        try:  # only a folder already here: the weights are not needed
            tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(cfg.model, download=False).path))
        except UserError as err:
            print(f"qwen_kit: --model {cfg.model}: {err}", file=sys.stderr)
    if tokenizer is None:
        print("qwen_kit: no local tokenizer (--model): the prompt budget is estimated at one token per 3 bytes",
              file=sys.stderr)
        tokenizer = EstimatingTokenizer()
    print(f"answering through {backend.base_url} (model {backend.model})", file=sys.stderr)
    return RemoteModel(tokenizer, backend, backend.model)
