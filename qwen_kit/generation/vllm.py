"""vLLM as the generation backend (``--backend vllm``): continuous batching with paged
attention, tensor parallelism and LoRA, on GPUs. The kit decides the engine's arguments
(:func:`engine_args`) by its own rules; vLLM does the serving.

vLLM is not a dependency (it needs CUDA): ``pip install vllm`` on the GPU machine.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from qwen_kit.generation.sampling import GenerationSettings
from qwen_kit.errors import UserError

INSTALL_HINT = "pip install vllm (on a machine with an NVIDIA GPU)"


def engine_args(model_path: str, *, capability: tuple[int, int] | None, adapter: str | None = None,
                tensor_parallel: int = 1, gpus: int = 1, max_context: int = 4096, load_in_4bit: bool = False,
                max_batch: int = 64, gpu_memory_utilization: float = 0.90) -> dict[str, Any]:
    """The keyword arguments for vLLM's ``AsyncEngineArgs``.

    - dtype: ``half`` below compute capability 8.0 (a T4 has no bfloat16), ``bfloat16`` from 8.0;
    - a LoRA adapter: LoRA enabled with the adapter's own rank (vLLM's default limit is 16);
    - ``--tensor-parallel N``: at most the GPUs there are;
    - 4-bit: bitsandbytes quantization, as the transformers backend loads it.
    """
    if capability is None:
        raise UserError("--backend vllm needs an NVIDIA GPU; none is visible here. Use --backend transformers")
    if tensor_parallel < 1 or tensor_parallel > gpus:
        raise UserError(f"--tensor-parallel {tensor_parallel}: this machine has {gpus} GPU(s); give 1 to {gpus}")
    args: dict[str, Any] = {
        "model": model_path,
        "dtype": "half" if capability < (8, 0) else "bfloat16",
        "tensor_parallel_size": tensor_parallel,
        "max_model_len": max_context,
        "max_num_seqs": max_batch,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enable_prefix_caching": True,  # a chat resends its history with every turn
    }
    if load_in_4bit:
        args["quantization"] = "bitsandbytes"
    if adapter:
        config = Path(adapter) / "adapter_config.json"
        try:
            rank = int(json.loads(config.read_text(encoding="utf-8")).get("r", 16))
        except (OSError, ValueError) as err:
            raise UserError(f"{config}: cannot read the adapter's rank ({err}); pass the folder the LoRA run saved") \
                from None
        args.update(enable_lora=True, max_loras=1, max_lora_rank=max(16, rank))
    return args


def sampling_params(settings: GenerationSettings, stop: list[str]) -> dict[str, Any]:
    """The keyword arguments for vLLM's ``SamplingParams`` that ask for what ``settings`` asks
    of the other backends.

    - temperature 0 is vLLM's greedy; the kit's other ways of keeping only the likeliest token
      (``greedy``, ``top_p=0``, which vLLM refuses, ``top_k=1``) become it too;
    - ``top_k=0`` (off) is vLLM's -1;
    - the repetition penalty: vLLM counts the prompt's tokens as well as the reply's, which is the
      kit's ``--penalize-prompt``; vLLM has no reply-only penalty, so without that flag the two
      differ (docs/serve.md);
    - seeds: vLLM's random numbers are its own, so a seeded reply repeats on vLLM but is not
      the reply the embedded model gives for that seed.
    """
    args: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "stop": stop or None, "seed": settings.seed,
                            "repetition_penalty": settings.repetition_penalty, "ignore_eos": settings.ignore_eos}
    if settings.samples:
        args.update(temperature=settings.temperature, top_p=settings.top_p,
                    top_k=settings.top_k if settings.top_k > 0 else -1)
    else:
        args.update(temperature=0.0, top_p=1.0, top_k=-1)
    return args


def load_for_vllm(cfg: Any) -> Any:
    """The model folder and tokenizer, and a :class:`VLLMBackend` built over them."""
    from transformers import AutoTokenizer

    from qwen_kit.generation.backends import RemoteModel
    from qwen_kit.model.load import pick_device
    from qwen_kit.model.resolve import resolve_model

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError(f"--backend vllm needs vLLM: {INSTALL_HINT}") from None
    import torch

    ref = resolve_model(cfg.model or "Qwen/Qwen2.5-0.5B-Instruct")
    _, capability = pick_device("cuda")
    adapter = cfg.adapter or (str(ref.adapter) if ref.adapter else None)
    args = engine_args(str(ref.path), capability=capability, adapter=adapter, tensor_parallel=cfg.tensor_parallel,
                       gpus=torch.cuda.device_count(), max_context=cfg.max_context or 4096,
                       load_in_4bit=bool(cfg.load_in_4bit))
    tokenizer = AutoTokenizer.from_pretrained(str(ref.path))
    backend = VLLMBackend(args, adapter)
    loaded = RemoteModel(tokenizer, backend, ref.name)
    print(f"vLLM engine: {', '.join(f'{k}={v}' for k, v in args.items() if k != 'model')}", file=sys.stderr)
    return loaded


class VLLMBackend:
    """vLLM's ``AsyncLLMEngine`` on an event loop of its own; each :meth:`generate` call streams
    one request. Prompts are the kit's rendered text, so retrieval, persona and memory are
    the same as with the embedded model."""

    name = "vllm"

    def __init__(self, args: dict[str, Any], adapter: str | None = None):
        import asyncio

        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**args))
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, adapter)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="qwen_kit-vllm", daemon=True).start()

    def generate(self, prompt: str, messages: list[dict[str, str]], settings: GenerationSettings, stop: list[str],
                 stopped: threading.Event, on_piece: Callable[[str], None], stats: Any) -> str:
        import asyncio

        from vllm import SamplingParams

        params = SamplingParams(**sampling_params(settings, stop))
        request_id = uuid.uuid4().hex
        start, result = time.perf_counter(), {"reason": "stop", "sent": 0}

        async def run() -> None:
            async for out in self.engine.generate(prompt, params, request_id, lora_request=self.lora):
                if stopped.is_set():
                    await self.engine.abort(request_id)
                    result["reason"] = "cancelled"
                    return
                done = out.outputs[0]
                if done.text[result["sent"]:]:
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - start
                    on_piece(done.text[result["sent"]:])
                    result["sent"] = len(done.text)
                stats.prompt_tokens = len(out.prompt_token_ids or [])
                stats.new_tokens = len(done.token_ids)
                if done.finish_reason:
                    result["reason"] = done.finish_reason

        asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        stats.total_s = time.perf_counter() - start
        stats.stopped_at_eos = result["reason"] == "stop"
        return result["reason"]
