"""Small, offline stand-ins for real models, for tests and smoke runs."""

from qwen_kit.testing.tiny import build_tiny_qwen

__all__ = ["build_tiny_qwen"]
