"""Choosing dtype, attention kernel and quantisation from the hardware (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu" or "cuda:N"
    dtype: str  # "float32", "bfloat16" or "float16"
    attn_implementation: str
    load_in_4bit: bool


def choose_precision(device: str, capability: tuple[int, int] | None = None,
                     load_in_4bit: bool = False, dtype: str = "auto") -> Precision:
    """Pick how to load a model on ``device``.

    Args:
        device: ``cpu`` or ``cuda[:N]``.
        capability: CUDA compute capability, e.g. ``(7, 5)`` for a T4, ``(8, 0)`` for an A100.
        load_in_4bit: quantise the weights to nf4 (bitsandbytes; runs on CPU too).
        dtype: ``auto`` or an explicit ``float32`` / ``bfloat16`` / ``float16``.

    Below compute capability 8 (T4, V100, P100) there is no bf16 and no FlashAttention-2,
    so compute runs in fp16 with PyTorch's SDPA kernel; Ampere and newer use bf16; the CPU
    uses fp32, the only dtype its kernels are fast and exact in.
    """
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if capability and capability >= (8, 0) else "float16"
        else:
            dtype = "float32"
    return Precision(device=device, dtype=dtype, attn_implementation="sdpa", load_in_4bit=load_in_4bit)
