"""llama.cpp as the generation backend (``--backend llamacpp --model FILE.gguf``): the model runs
in llama.cpp through its Python bindings (llama-cpp-python), in this process; the kit keeps
everything above generation (persona, knowledge base, memory, the prompt budget) unchanged.

What goes through llama.cpp and what stays the kit's:

- the prompt: the text the chat template renders, tokenized by llama.cpp with special tokens
  parsed and no BOS added (the template writes any BOS itself), as the other backends tokenize it;
- each step's logits come from llama.cpp; the next token is chosen by the kit's one sampling
  rule (:class:`~qwen_kit.generation.sampling.TokenSampler`: transformers' processors in
  ``generate``'s order, the reply-only repetition penalty, a seeded ``torch.Generator``), so a
  setting means what it means on every backend. llama.cpp's own sampler chain is not used: its
  ``repeat_penalty`` looks back over the last ``repeat_last_n`` tokens, prompt included, and it
  applies temperature after top-k/top-p, which keeps other tokens than transformers does;
- text: the kit's :class:`~qwen_kit.generation.detokenize.IncrementalDecoder` over the tokenizer
  the GGUF carries (transformers reads it from the file), which also counts the prompt budget;
- end ids: the tokens llama.cpp marks as end of generation in the file (``llama_vocab_is_eog``:
  EOS, EOT, ``<|im_end|>``, ``<|endoftext|>``...).

One llama.cpp context serves one reply at a time; on the web page and the API server the other
conversations wait their turn (a waiting one that is cancelled ends without generating). The
evaluated tokens stay in llama.cpp's cache, so the next turn of a conversation evaluates only
what follows the prefix it shares with the last prompt.

The bindings are not a dependency of the kit: ``make llama-backend`` installs the version in
``requirements/lock-llama.txt`` into the kit's venv (``pip install -e ".[llama]"`` does the same).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from qwen_kit.errors import UserError
from qwen_kit.generation.base import GenerationFailed, StopFilter, TurnStats
from qwen_kit.generation.detokenize import IncrementalDecoder
from qwen_kit.generation.sampling import GenerationSettings, TokenSampler

INSTALL_HINT = "make llama-backend (installs llama-cpp-python from requirements/lock-llama.txt into this venv)"


def llama_cpp_available() -> bool:
    """Whether llama.cpp's Python bindings can be imported in this venv."""
    import importlib.util

    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def physical_cores() -> int:
    """CPU cores this process may run on, hyper-threads not counted (llama.cpp's own default:
    a second thread on the same core slows its decode down rather than up)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return max(1, (os.cpu_count() or 2) // 2)
    cores: set[tuple[str, str]] = set()
    try:  # Linux: one (package, core) pair per physical core among the CPUs allowed
        cpu, package = None, "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                package = value
            elif key == "core id" and cpu in allowed:
                cores.add((package, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


class LlamaCppBackend:
    """One GGUF file in llama.cpp; :meth:`generate` streams one reply (see the module's doc).

    Args:
        path: the ``.gguf`` file.
        tokenizer: the HF tokenizer for text pieces (default: the one the file carries,
            :func:`load_gguf_tokenizer`, cached in ``tokenizer_cache``).
        n_ctx: llama.cpp's context: prompt + reply tokens.
        threads: CPU threads for prompt and decode (default: :func:`physical_cores`).
    """

    name = "llamacpp"

    def __init__(self, path: str | Path, tokenizer: Any = None, n_ctx: int = 4096, threads: int | None = None,
                 tokenizer_cache: Path | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UserError(f"--backend llamacpp needs llama.cpp's Python bindings: {INSTALL_HINT}") from None
        import llama_cpp

        self.path = Path(path)
        self.threads = threads or physical_cores()
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        try:
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=self.threads,
                             n_threads_batch=self.threads, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise UserError(f"{self.path}: llama.cpp cannot load it ({err}); pass a .gguf file "
                            "(scripts/export_gguf.py writes one)") from None
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        n_vocab = self.llm.n_vocab()
        self.end_ids = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        # rows that pad the vocabulary to the weights' size: no text (as the HF tokenizer, which lacks them)
        unused = [i for i in range(n_vocab)
                  if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_UNUSED]
        self.tokenizer = tokenizer if tokenizer is not None else load_gguf_tokenizer(self.path, tokenizer_cache, unused)
        self.n_ctx_train = self.llm._model.n_ctx_train()
        self.lock = threading.Lock()  # one llama.cpp context: one reply at a time

    def tokenize(self, prompt: str) -> list[int]:
        """The prompt's ids as llama.cpp reads them: special tokens parsed, no BOS added."""
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def _evaluate_prompt(self, ids: list[int]) -> None:
        """Evaluate ``ids``, keeping the cached prefix the last prompt and reply share with them
        (at least the last id is evaluated again, so its logits are fresh)."""
        llm, shared = self.llm, 0
        for cached, new in zip(llm.input_ids[: llm.n_tokens].tolist(), ids[:-1]):
            if cached != new:
                break
            shared += 1
        llm.n_tokens = shared  # eval() drops the cache from here on
        llm.eval(ids[shared:])

    def _logits(self) -> Any:
        import numpy as np
        import torch

        row = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),))
        return torch.from_numpy(row.copy())

    def generate(self, prompt: str, messages: list[dict[str, str]], settings: GenerationSettings, stop: list[str],
                 stopped: threading.Event, on_piece: Callable[[str], None], stats: TurnStats) -> str:
        start = time.perf_counter()
        while not self.lock.acquire(timeout=0.05):  # another conversation's reply is running
            if stopped.is_set():
                return "cancelled"
        try:
            return self._generate(prompt, settings, stop, stopped, on_piece, stats, start)
        except (GenerationFailed, UserError):
            raise
        except Exception as err:
            self.llm.n_tokens = 0  # whatever the cache holds now is not trusted again
            raise GenerationFailed(f"generation failed: {type(err).__name__}: {err}") from err
        finally:
            stats.total_s = time.perf_counter() - start
            self.lock.release()

    def _generate(self, prompt: str, settings: GenerationSettings, stop: list[str], stopped: threading.Event,
                  on_piece: Callable[[str], None], stats: TurnStats, start: float) -> str:
        ids = self.tokenize(prompt)
        stats.prompt_tokens = len(ids)
        room = self.llm.n_ctx() - len(ids)
        if room < 1:
            raise GenerationFailed(f"the prompt has {len(ids)} tokens; llama.cpp's context holds {self.llm.n_ctx()}")
        sampler = TokenSampler(settings, ids)
        decoder, sink = IncrementalDecoder(self.tokenizer), StopFilter(stop, on_piece)
        ends = set() if settings.ignore_eos else set(self.end_ids)
        self._evaluate_prompt(ids)
        reason = "length"
        for _ in range(min(settings.max_new_tokens, room)):
            if stopped.is_set():
                reason = "cancelled"
                break
            token = sampler.next(self._logits())
            if stats.first_token_s is None:
                stats.first_token_s = time.perf_counter() - start
            stats.new_tokens += 1
            stats.last_token_id = token
            if token in ends:
                stats.stopped_at_eos, reason = True, "stop"
                break
            sink.feed(decoder.add(token))
            if sink.hit:
                reason = "stop"
                break
            self.llm.eval([token])
        if reason != "cancelled" and not sink.hit:
            sink.feed(decoder.flush())
        if not sink.hit:
            sink.flush()
        return reason


class LlamaCppModel:
    """Stands where a loaded model would for ``--backend llamacpp``: the tokenizer the GGUF
    carries (prompt budget), the model's trained context length, and the backend that answers."""

    precision = None
    adapter = None

    def __init__(self, path: Path, backend: LlamaCppBackend):
        self.tokenizer, self.backend = backend.tokenizer, backend
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=backend.n_ctx_train))
        self.ref = SimpleNamespace(name=path.name, path=path, source="gguf")
        self.eos_token_ids = list(backend.end_ids)


def load_gguf_tokenizer(path: Path, cache_dir: Path | None = None, unused_ids: list[int] | None = None) -> Any:
    """The HF tokenizer stored in a GGUF file (vocabulary, merges, specials, chat template).

    transformers rebuilds it from the file's ``tokenizer.ggml.*`` keys, which takes ~10 s for
    Qwen2.5's 151k tokens; the result is saved under ``cache_dir`` (default: the platform's cache,
    ``gguf-tokenizers/``), keyed by the file's path, size and modification time, and read from
    there (well under a second) while the file is unchanged. ``unused_ids``: the file's padding
    rows (``[PAD…]``), made special so that decoding leaves them out, as the HF tokenizer does.
    """
    import hashlib

    from transformers import AutoTokenizer

    from platforms import current_platform

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = (cache_dir or current_platform().cache_dir() / "gguf-tokenizers") / f"{path.stem}-{key}"
    if (cached / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except (OSError, ValueError):
            pass  # a damaged copy: rebuild it from the file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: transformers cannot read the tokenizer in this GGUF file ({err}); "
                        "export the model again with scripts/export_gguf.py") from None
    if unused_ids:
        from tokenizers import AddedToken

        names = tokenizer.convert_ids_to_tokens(unused_ids)
        tokenizer.add_tokens([AddedToken(n, special=True) for n in names], special_tokens=True)
    try:  # written aside and renamed: a reader never sees half a folder
        import shutil
        import tempfile

        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(cached)
        except OSError:  # another process saved it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        print(f"qwen_kit: cannot keep the GGUF tokenizer in {cached.parent} ({err}); it is rebuilt at every start",
              file=sys.stderr)
    return tokenizer


def load_for_llamacpp(cfg: Any) -> LlamaCppModel:
    """``--backend llamacpp --model FILE.gguf [--threads N] [--max-context N]``."""
    if not cfg.model or not cfg.model.lower().endswith(".gguf"):
        raise UserError("--backend llamacpp needs --model FILE.gguf (scripts/export_gguf.py or `make gguf` writes one "
                        "from a model folder)")
    path = Path(cfg.model).expanduser()
    if not path.is_file():
        raise UserError(f"--model {cfg.model}: no such file")
    if cfg.adapter:
        raise UserError("--backend llamacpp takes no --adapter: merge it into the GGUF file "
                        f"(scripts/export_gguf.py BASE --adapter {cfg.adapter} --out FILE.gguf)")
    if not llama_cpp_available():
        raise UserError(f"--backend llamacpp needs llama.cpp's Python bindings: {INSTALL_HINT}")
    backend = LlamaCppBackend(path, n_ctx=cfg.max_context or 4096, threads=cfg.threads)
    print(f"llama.cpp: {path.name}, {backend.threads} threads, context {backend.llm.n_ctx()}", file=sys.stderr)
    return LlamaCppModel(path, backend)
