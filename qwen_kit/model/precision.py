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
                     load_in_4bit: bool | None = False, dtype: str = "auto", prefer_4bit: bool = False,
                     attn_implementation: str = "sdpa") -> Precision:
    """Pick how to load a model on ``device``.

    Args:
        device: ``cpu`` or ``cuda[:N]``.
        capability: CUDA compute capability, e.g. ``(7, 5)`` for a T4, ``(8, 0)`` for an A100.
        load_in_4bit: quantise the weights to nf4 with double quantisation (bitsandbytes; runs
            on CPU too); ``None``: the platform's default, ``prefer_4bit``, on a GPU.
        dtype: ``auto`` or an explicit ``float32`` / ``bfloat16`` / ``float16``.
        prefer_4bit: the platform's wish for this model size (Kaggle: 1.5B and up on a T4).
        attn_implementation: ``sdpa``, or ``eager`` as the fallback after a failed check.

    Below compute capability 8 (T4, V100, P100) there is no bf16 and no FlashAttention-2,
    so compute runs in fp16 with PyTorch's SDPA kernel; Ampere and newer use bf16; the CPU
    uses fp32, the only dtype its kernels are fast and exact in.
    """
    on_gpu = device.startswith("cuda")
    if dtype == "auto":
        if on_gpu:
            dtype = "bfloat16" if capability and capability >= (8, 0) else "float16"
        else:
            dtype = "float32"
    if load_in_4bit is None:
        load_in_4bit = prefer_4bit and on_gpu
    return Precision(device=device, dtype=dtype, attn_implementation=attn_implementation, load_in_4bit=load_in_4bit)


ATTENTION_CHOICES = ["auto", "sdpa", "flash_attention_2", "eager"]


def flash_attn_installed() -> bool:
    """Whether the flash-attn package (FlashAttention-2) can be imported, without importing it."""
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str, device: str, capability: tuple[int, int] | None,
                     flash_installed: bool) -> tuple[str, str]:
    """The attention kernel for ``requested`` (``auto`` or a name) on this hardware, and why.

    ``auto`` takes FlashAttention-2 when flash-attn is installed and the GPU is Ampere or newer
    (compute capability 8.0: A100, A800, L20, 30xx/40xx, H100), and PyTorch's SDPA otherwise
    (the CPU, T4 and V100, or no flash-attn). Asking for FlashAttention-2 where it cannot run
    is a :class:`UserError`.
    """
    from qwen_kit.errors import UserError

    on_gpu = device.startswith("cuda")
    fa2_ok = on_gpu and capability is not None and capability >= (8, 0)
    if requested == "flash_attention_2":
        if not flash_installed:
            raise UserError("--attn flash_attention_2 needs the flash-attn package: pip install flash-attn "
                            "--no-build-isolation (or use --attn sdpa)")
        if not fa2_ok:
            where = "the CPU" if not on_gpu else f"a GPU of compute capability {capability[0]}.{capability[1]}"
            raise UserError(f"--attn flash_attention_2 needs an Ampere or newer GPU (8.0+); this is {where}: "
                            "use --attn sdpa")
        return requested, "asked for"
    if requested != "auto":
        return requested, "asked for"
    if fa2_ok and flash_installed:
        return "flash_attention_2", f"auto: flash-attn installed, GPU capability {capability[0]}.{capability[1]}"
    if fa2_ok:
        return "sdpa", "auto: the GPU supports FlashAttention-2 but flash-attn is not installed"
    if on_gpu and capability is not None:
        return "sdpa", f"auto: FlashAttention-2 needs capability 8.0+, this GPU is {capability[0]}.{capability[1]}"
    return "sdpa", "auto: no GPU"


def estimate_params(config: dict) -> float:
    """Parameters of a decoder-only transformer from its ``config.json`` (within a few %),
    known before any weight is read: Qwen2.5-0.5B → 0.49e9, 1.5B → 1.54e9."""
    h = config.get("hidden_size", 0)
    layers = config.get("num_hidden_layers", 0)
    inter = config.get("intermediate_size", 4 * h)
    vocab = config.get("vocab_size", 0)
    heads = config.get("num_attention_heads", 1) or 1
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return float(layers * per_layer + embeddings)
