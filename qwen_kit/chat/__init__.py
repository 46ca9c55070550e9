"""Chat: prompt building, the streaming engine and the terminal front end."""

from qwen_kit.chat.engine import ChatEngine, Turn
from qwen_kit.chat.prompt import Round, build_messages, fit_rounds, render_prompt
from qwen_kit.generation.sampling import GenerationSettings

__all__ = ["ChatEngine", "GenerationSettings", "Round", "Turn", "build_messages", "fit_rounds", "render_prompt"]
