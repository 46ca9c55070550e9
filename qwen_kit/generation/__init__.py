"""Generation: where a finished prompt becomes text. Below the chat pipeline, above the model.

Every backend has one method, ``generate(prompt, messages, settings, stop, stopped, on_piece,
stats)``, follows one sampling rule (:class:`GenerationSettings`) and streams through one
incremental detokenizer:

- :class:`~qwen_kit.generation.embedded.EmbeddedBackend`: this process's model, one reply at a time;
- :class:`~qwen_kit.generation.backends.BatchedBackend`: this process's model through the
  continuous batcher (:mod:`qwen_kit.generation.batching`), many replies together;
- :class:`~qwen_kit.generation.backends.OpenAIBackend`: any OpenAI-compatible server;
- :class:`~qwen_kit.generation.vllm.VLLMBackend`: vLLM's engine in this process (GPU);
- :class:`~qwen_kit.generation.llamacpp.LlamaCppBackend`: a GGUF file in llama.cpp in this process (CPU).
"""

from qwen_kit.generation.base import GenerationFailed, StopFilter, TurnStats
from qwen_kit.generation.sampling import GenerationSettings

__all__ = ["GenerationFailed", "GenerationSettings", "StopFilter", "TurnStats"]
