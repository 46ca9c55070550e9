"""Fine-tuning: one trainer path for full SFT, LoRA and QLoRA."""

from qwen_kit.train.config import TrainConfig

__all__ = ["TrainConfig"]
