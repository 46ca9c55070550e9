"""Finding and loading models: one resolver and one loader for every job."""

from qwen_kit.model.load import LoadedModel, LoadOptions, load_model
from qwen_kit.model.resolve import DEFAULT_CHAT_MODEL, DEMO, ModelRef, resolve_model

__all__ = ["DEFAULT_CHAT_MODEL", "DEMO", "LoadOptions", "LoadedModel", "ModelRef", "load_model", "resolve_model"]
