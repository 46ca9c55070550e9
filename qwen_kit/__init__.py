"""qwen_kit: fine-tune small Qwen2.5 models, evaluate them and chat with them.

The package is the library; ``scripts/`` and the Makefile are thin doors into it.
"""

__version__ = "0.1.0"
