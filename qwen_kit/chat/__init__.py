"""The chat pipeline: prompt building, the streaming engine, knowledge base, persona and memory
(the front ends are :mod:`qwen_kit.terminal`, :mod:`qwen_kit.webui` and :mod:`qwen_kit.serve`)."""

from qwen_kit.chat.engine import ChatEngine, Turn
from qwen_kit.chat.prompt import Round, build_messages, fit_rounds, render_prompt
from qwen_kit.generation.sampling import GenerationSettings

__all__ = ["ChatEngine", "GenerationSettings", "Round", "Turn", "build_messages", "fit_rounds", "render_prompt"]
