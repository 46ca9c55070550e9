"""How the next token is chosen: the settings every generation backend takes, and the one rule
that turns a row of logits into a token.

The rule is transformers' own: :meth:`GenerationSettings.logits_processors` builds transformers'
``LogitsProcessor`` classes in the order ``model.generate`` applies them (repetition penalty,
then temperature, top-k, top-p), and a token is the argmax (greedy) or one draw of
``torch.multinomial`` from the softmax, as ``generate`` draws it. The embedded backend hands the
same processors to ``generate``; the continuous batcher runs them per row (:class:`TokenSampler`).
So a seeded request gets the same tokens from either, and from plain ``generate`` with the same
settings (tests compare them setting by setting).

The kit's one departure from ``generate``'s defaults: the repetition penalty counts the reply's
own tokens only (``penalize_prompt=True`` adds the prompt's, as ``generate`` does), because the
prompt's names and facts are what an answer should repeat (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwen_kit.errors import UserError


@dataclass
class GenerationSettings:
    """How one reply is generated. Defaults are Qwen2.5-Instruct's recommended ones.

    ``top_k=0`` and ``top_p=1`` switch those filters off; ``top_p=0`` and ``top_k=1`` keep only
    the likeliest token, as does ``temperature=0`` (OpenAI's meaning) or ``greedy``.
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    greedy: bool = False
    seed: int | None = None
    ignore_eos: bool = False  # keep going past end ids until max_new_tokens (benchmarks; vLLM's field)
    # the repetition penalty counts the reply's own tokens only (True: the prompt's too, as
    # transformers' generate does; that also penalises the names and facts a persona, a source
    # or a memory puts in the prompt, which is what the answer should repeat; docs/benchmarks.md)
    penalize_prompt: bool = False

    @property
    def samples(self) -> bool:
        """Whether a token is drawn at random; False when only the likeliest token can come out."""
        return not self.greedy and self.temperature > 0 and self.top_p > 0 and self.top_k != 1

    def check(self) -> None:
        """Raise :class:`UserError` for values no backend accepts."""
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be 0 or more, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise UserError(f"top_p must be between 0 and 1, got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be 0 (off) or more, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise UserError(f"repetition_penalty must be above 0, got {self.repetition_penalty}")

    def logits_processors(self, prompt_tokens: int) -> Any:
        """transformers' processors for a sequence whose first ``prompt_tokens`` ids are the prompt,
        in ``generate``'s order (penalty, temperature, top-k, top-p). Returns a ``LogitsProcessorList``."""
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        out = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty), prompt_ignore_length=(
                None if self.penalize_prompt else prompt_tokens)))
        if self.samples:  # generate's "warpers": sampling only, each skipped at its neutral value
            if self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(float(self.temperature)))
            if self.top_k != 0:
                out.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(float(self.top_p)))
        return out

    def generate_kwargs(self, prompt_tokens: int) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: this rule's processors, and generate's own
        sampling switched off (the model's generation config would add Qwen's defaults again)."""
        return {"do_sample": self.samples, "max_new_tokens": self.max_new_tokens, "temperature": None,
                "top_p": None, "top_k": None, "repetition_penalty": None,
                "logits_processor": self.logits_processors(prompt_tokens)}


class TokenSampler:
    """The rule for one sequence generated outside ``generate`` (the batcher's rows): feed it each
    row of logits, it returns the next id and remembers it.

    Args:
        settings: the request's settings; its seed starts the private random generator (a fresh
            random seed when None), so a seeded request draws what ``generate`` draws after
            ``torch.manual_seed(seed)``.
        prompt_ids: the prompt (the repetition penalty's context when ``penalize_prompt``).
        device: where the logits are.
    """

    def __init__(self, settings: GenerationSettings, prompt_ids: list[int], device: Any = "cpu"):
        import os

        import torch

        self.settings = settings
        self.processors = settings.logits_processors(len(prompt_ids))
        self.ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        self.generator = None
        if settings.samples:
            self.generator = torch.Generator(device=device)
            seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(6), "little")
            self.generator.manual_seed(seed)

    def next(self, logits: Any) -> int:
        """``logits``: the model's scores for the next position, shape ``[vocab]``, float32."""
        import torch

        scores = self.processors(self.ids, logits[None, :]) if self.processors else logits[None, :]
        if self.generator is None:
            token = scores.argmax(-1)
        else:
            token = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[:, 0]
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        return int(token)
