"""The options of a fine-tuning run (``scripts/sft.py --help`` lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field

QWEN2_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _opt(default, help: str, choices=None, factory=None):
    meta = {"help": help, **({"choices": choices} if choices else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    model: str = _opt("demo", "base model: folder, hub id, platform model name, demo or qwen-coder-0.5b/1.5b")
    data: str = _opt("yahma/alpaca-cleaned", "data: .json/.jsonl/.csv/.parquet, saved dataset folder or hub id")
    output_dir: str | None = _opt(None, "run folder (default: <platform output>/<run_name>)")
    run_name: str | None = _opt(None, "run name, also the TensorBoard folder (default: <model>-<finetune>-<loss>)")
    finetune: str = _opt("full", "full, lora or qlora", ["full", "lora", "qlora"])
    loss: str = _opt("response", "response: assistant tokens only; full: every token", ["response", "full"])
    system_prompt: str | None = _opt(None, "system message for rows without one (default: the template's)")
    no_system_prompt: bool = _opt(False, "render prompts with no system block at all")
    max_len: int = _opt(2048, "longest sequence in tokens")
    too_long: str = _opt("truncate", "rows longer than --max-len: truncate or drop", ["truncate", "drop"])
    max_bad_share: float = _opt(0.05, "refuse to start when more than this share of rows is bad")
    packing: bool | None = _opt(None, "padding-free packing; default: on with FlashAttention kernels (varlen), "
                                      "else length-grouped padded batches (cheaper with SDPA/eager attention)")
    group_by_length: bool = _opt(True, "unpacked batches of similar length (less padding); off: random batches")
    per_device_batch: int = _opt(8, "micro-batch per device (examples; packed: bins of --max-len tokens)")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    learning_rate: float = _opt(2e-5, "peak learning rate")
    epochs: float = _opt(1.0, "training epochs")
    max_steps: int = _opt(-1, "stop after this many optimizer steps (-1: use --epochs)")
    warmup_ratio: float = _opt(0.03, "share of steps for linear warmup")
    lr_scheduler: str = _opt("cosine", "learning-rate schedule after warmup")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    eval_share: float = _opt(0.01, "share of rows held out for eval loss (0: none)")
    eval_steps: int = _opt(200, "evaluate every N steps")
    save_steps: int = _opt(500, "checkpoint every N steps (0: none, not even at the end: only the final model is "
                                "saved, so --resume cannot continue the run; a full 0.5B checkpoint with its "
                                "optimizer is 7 GB)")
    bench: str | None = _opt(None, "benchmarks scored during training, comma-separated: OpenCompass config names "
                                   "(ARC_e_ppl, ...) or custom MCQ files (docs/evaluation.md)")
    bench_steps: int = _opt(200, "score the benchmarks every N steps (and at the end)")
    bench_limit: int | None = _opt(100, "items per benchmark when scoring during training")
    save_total_limit: int = _opt(3, "keep at most N checkpoints")
    logging_steps: int = _opt(10, "log every N steps")
    seed: int = _opt(42, "random seed (data order, eval split, LoRA init)")
    gradient_checkpointing: bool = _opt(False, "trade compute for memory")
    resume: str | None = _opt(None, "continue from 'latest' checkpoint or a checkpoint folder")
    overwrite: bool = _opt(False, "start over in an output folder that already has checkpoints")
    attn: str = _opt("auto", "attention kernel: auto (FlashAttention-2 when flash-attn is installed on an Ampere+ "
                             "GPU, else SDPA), sdpa, flash_attention_2 or eager",
                     ["auto", "sdpa", "flash_attention_2", "eager"])
    liger: bool = _opt(False, "apply liger-kernel's fused Qwen2 kernels (RMSNorm, SwiGLU, RoPE, fused linear "
                              "cross-entropy); CUDA only, needs pip install liger-kernel")
    all_logits: bool = _opt(False, "run the LM head at every position, as transformers does; by default it runs "
                                   "only where a token is trained on (same loss, less time and memory)")
    dtype: str = _opt("auto", "auto: bf16 on Ampere+, fp16 on T4/V100, fp32 on CPU",
                      ["auto", "float32", "bfloat16", "float16"])
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _opt(0.05, "LoRA dropout")
    lora_targets: list[str] = _opt(None, "modules that get LoRA (default: every linear projection of Qwen2)",
                                   factory=lambda: list(QWEN2_LINEAR))
    deepspeed: str | None = _opt(None, "DeepSpeed config JSON for ZeRO-2/3 (configs/ds_zero2.json, ds_zero3.json); "
                                       "needs pip install deepspeed")
    trust_remote_code: bool = _opt(False, "allow the model's own Python code to run")
