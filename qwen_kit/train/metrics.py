"""What a training run really computed, counted from the batches the Trainer trained on.

- ``real_tokens``: tokens of the examples themselves (the attention mask's ones; every token of
  a packed row);
- ``computed_tokens``: every position the model ran, padding included;
- ``padding_efficiency`` = real / computed;
- ``trained_tokens``: positions the loss is computed on (labels other than -100, shifted as
  the loss shifts them): the reply's tokens with ``--loss response``;
- ``real_tokens_per_s``: real tokens over the wall time of ``trainer.train()``;
- ``mfu`` (GPU only): model FLOPs of the real tokens (6·N per token for full training, 4·N when
  the weights are frozen as in LoRA/QLoRA, plus causal attention, 6·L·d·s² per sequence of s
  tokens) over the device's peak dense bf16/fp16 rate for the same wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwen_kit.data.render import IGNORE

# Dense tensor-core peak (TFLOP/s, bf16 or fp16 with fp32 accumulation) by device-name fragment,
# from the vendors' data sheets; the first match wins. T4 and V100 have no bf16: their fp16 rate.
PEAK_TFLOPS = [("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("H20", 148.0), ("A100", 312.0),
               ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L20", 119.5), ("L4", 121.0), ("A10", 125.0),
               ("4090", 165.0), ("3090", 71.0), ("V100", 125.0), ("T4", 65.0), ("P100", 18.7)]


def peak_flops(device_name: str) -> float | None:
    """Peak dense half-precision FLOP/s of a GPU by name, or None when unknown (no MFU then)."""
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops * 1e12
    return None


def sequence_lengths(inputs: dict[str, Any]) -> list[int]:
    """Lengths of the examples in one collated batch: rows of the attention mask, or the
    segments of a packed row (its position ids restart at 0 for every example)."""
    if "attention_mask" in inputs:
        return [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
    positions = inputs["position_ids"].reshape(-1).tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return [b - a for a, b in zip(starts, starts[1:])]


@dataclass
class TokenMeter:
    """Running totals over the batches a process trained on (add the other processes' with
    :meth:`totals` under DDP)."""

    params: int
    layers: int
    hidden: int
    frozen_base: bool = False
    real: int = 0
    computed: int = 0
    trained: int = 0
    attn_sq: int = 0  # sum of s^2 over sequences (causal attention cost)
    sequences: int = 0
    batch_lengths: list[list[int]] = field(default_factory=list)
    keep_batches: bool = False

    def add(self, inputs: dict[str, Any]) -> None:
        lengths = sequence_lengths(inputs)
        self.real += sum(lengths)
        self.computed += int(inputs["input_ids"].numel())
        if "labels" in inputs:
            self.trained += int((inputs["labels"][..., 1:] != IGNORE).sum())
        self.attn_sq += sum(n * n for n in lengths)
        self.sequences += len(lengths)
        if self.keep_batches:
            self.batch_lengths.append(lengths)

    def totals(self) -> dict[str, int]:
        """Sums over every process (all-reduce under torch.distributed; every rank must call)."""
        values = [self.real, self.computed, self.trained, self.attn_sq, self.sequences]
        try:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                t = torch.tensor(values, dtype=torch.float64,
                                 device="cuda" if torch.cuda.is_available() else "cpu")
                dist.all_reduce(t)
                values = [int(v) for v in t.tolist()]
        except ImportError:
            pass
        return dict(zip(["real", "computed", "trained", "attn_sq", "sequences"], values))

    def model_flops(self, totals: dict[str, int]) -> float:
        per_token = (4 if self.frozen_base else 6) * self.params
        return per_token * totals["real"] + 6 * self.layers * self.hidden * totals["attn_sq"]

    def report(self, seconds: float, peak: float | None, world: int = 1) -> dict[str, float | int | None]:
        t = self.totals()
        out: dict[str, float | int | None] = {
            "real_tokens": t["real"], "computed_tokens": t["computed"], "trained_tokens": t["trained"],
            "padding_efficiency": t["real"] / t["computed"] if t["computed"] else None,
            "real_tokens_per_s": t["real"] / seconds if seconds > 0 else None,
            "computed_tokens_per_s": t["computed"] / seconds if seconds > 0 else None,
            "mfu": None,
        }
        if peak and seconds > 0:
            out["mfu"] = self.model_flops(t) / (seconds * peak * world)
        return out
