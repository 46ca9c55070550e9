"""Supervised fine-tuning on the Hugging Face Trainer: full, LoRA or QLoRA, one path.

Launch on one device with ``python scripts/sft.py ...`` and on N GPUs with
``torchrun --nproc_per_node=N scripts/sft.py ...`` (``make sft GPUS=N``): the Trainer
wraps the model in DDP, only rank 0 logs and saves, and the data is tokenized once by
the main process (the others wait, then read the cache).
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from platforms import current_platform
from qwen_kit.config import save_config
from qwen_kit.data.pack import LengthGroupedSampler, SFTCollator, SFTDataset
from qwen_kit.data.prepare import TokenizedData, prepare_data
from qwen_kit.data.render import IGNORE, RenderOptions
from qwen_kit.errors import UserError
from qwen_kit.train.config import TrainConfig
from qwen_kit.model.precision import choose_attention, estimate_params, flash_attn_installed
from qwen_kit.train.metrics import TokenMeter, peak_flops
from qwen_kit.model.portable import make_folder_portable, reply_end_ids, save_tokenizer


def _rank_info() -> tuple[int, int]:
    return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def resolve_output_dir(cfg: TrainConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir).expanduser()
    return current_platform().output_dir() / run_name(cfg)


def run_name(cfg: TrainConfig) -> str:
    if cfg.run_name:
        return cfg.run_name
    short = Path(cfg.model.rstrip("/")).name.lower()
    return f"{short}-{cfg.finetune}-{cfg.loss}"


def name_base_model(out: Path, model: str) -> None:
    """Record the base model in a saved LoRA adapter by the name the run was given when that name
    is not a folder here (``qwen-coder-0.5b``, ``demo``, a hub id): PEFT records the folder the
    name resolved to on this machine, which an adapter copied to another machine cannot find."""
    config = out / "adapter_config.json"
    if not config.is_file() or Path(model).expanduser().exists():
        return
    data = json.loads(config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = model
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def latest_complete_checkpoint(out: Path) -> str | None:
    """The newest ``checkpoint-N`` that was written completely. A run killed while saving
    leaves a folder without ``trainer_state.json`` (the Trainer writes it last); skip those."""
    found = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit())
    for _, path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return str(path)
        print(f"skipping incomplete checkpoint {path.name} (the run was stopped while saving it)", file=sys.stderr)
    return None


def _split(data: TokenizedData, share: float, seed: int) -> tuple[TokenizedData, TokenizedData | None]:
    n = len(data)
    n_eval = int(round(n * share)) if share > 0 else 0
    if share > 0 and n >= 10:
        n_eval = max(1, n_eval)
    if n_eval == 0:
        return data, None
    order = np.random.default_rng(seed).permutation(n)
    ev, tr = sorted(order[:n_eval]), sorted(order[n_eval:])
    pick = lambda idx: TokenizedData([data.input_ids[i] for i in idx], [data.labels[i] for i in idx])  # noqa: E731
    return pick(tr), pick(ev)


def _reply_labels(evaluation: TokenizedData, cfg: TrainConfig, tokenizer: Any, platform: Any,
                  progress: bool) -> list[np.ndarray]:
    """Labels that keep only the reply tokens, for rows tokenized with another loss: the same
    rows rendered with ``loss=response`` (the tokenization cache makes this cheap), matched by
    their token ids (identical in both renderings)."""
    opts = RenderOptions("response", cfg.system_prompt, cfg.no_system_prompt, cfg.max_len, cfg.too_long)
    with_reply = prepare_data(cfg.data, tokenizer, opts, platform.cache_dir() / "tokenized", 1.0, progress=progress)
    by_ids = {x.tobytes(): y for x, y in zip(with_reply.input_ids, with_reply.labels)}
    return [by_ids.get(x.tobytes(), np.full_like(y, IGNORE)) for x, y in zip(evaluation.input_ids, evaluation.labels)]


def _check_lora(cfg: TrainConfig, model: Any) -> None:
    if cfg.lora_r <= 0:
        raise UserError(f"--lora-r must be a positive rank, got {cfg.lora_r}")
    names = {name.split(".")[-1] for name, mod in model.named_modules() if type(mod).__name__.startswith("Linear")}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise UserError(f"LoRA target module(s) {', '.join(missing)} do not exist in {cfg.model}; "
                        f"its linear layers are: {', '.join(sorted(names))}")


def build_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """Load the base model through the kit's one loader and make it trainable for ``cfg.finetune``."""
    import torch

    from qwen_kit.model import LoadOptions, load_model

    local_rank, _ = _rank_info()
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    qlora = cfg.finetune == "qlora"
    # Full and LoRA training keep fp32 master weights and let autocast do bf16/fp16 math;
    # QLoRA stores the frozen base in nf4 and computes in the hardware's half type.
    dtype = cfg.dtype if (qlora or cfg.dtype != "auto") else "float32"
    if cfg.liger and not device.startswith("cuda"):
        raise UserError("--liger needs a CUDA GPU (liger-kernel's fused kernels are Triton GPU code); drop it on CPU")
    loaded = load_model(cfg.model, LoadOptions(dtype=dtype, device=device, load_in_4bit=qlora,
                                               trust_remote_code=cfg.trust_remote_code, attn=cfg.attn),
                        quiet=local_rank != 0)
    model, tokenizer = loaded.model, loaded.tokenizer
    if cfg.liger:
        apply_liger(model)
    model.config.use_cache = False  # no KV cache in training; also lets packed rows get a block-diagonal mask
    if cfg.deepspeed and cfg.finetune == "qlora":
        raise UserError("--deepspeed does not combine with QLoRA's 4-bit weights here; use --finetune lora or full")
    if cfg.finetune in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        _check_lora(cfg, model)
        if qlora:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        # the adapter's random init comes from --seed, not from whatever ran before in this process
        # (the Trainer seeds only later): sweep variants start alike, and the seed chooses the init
        from transformers import set_seed

        set_seed(cfg.seed)
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def apply_liger(model: Any) -> None:
    """liger-kernel's Qwen2 patches on a loaded model: fused RMSNorm, SwiGLU, RoPE and the fused
    linear cross-entropy (the logits are never materialised in full)."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
    except ImportError:
        raise UserError("--liger needs the liger-kernel package: pip install liger-kernel") from None
    kind = getattr(model.config, "model_type", "")
    if kind != "qwen2":
        raise UserError(f"--liger applies liger-kernel's Qwen2 patches; this model is {kind!r}")
    apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=True, model=model)


def loss_on_trained_positions(model: Any, head: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """The causal-LM loss transformers computes (logits in fp32, labels shifted, ``IGNORE``
    left out; summed over ``num_items_in_batch`` when given, else the mean), with the LM head
    ``head`` run only on the hidden states of positions that are trained on.

    With the default reply-only loss the prompt's positions (and the padding) need no logits:
    for Qwen2.5 each is a 151,936-wide projection whose fp32 logits and gradient are saved. A
    pre-hook on the head hands it just those rows; ``model`` is called whole, so DDP's and
    PEFT's wrappers see an ordinary forward pass.
    """
    import torch.nn.functional as F

    inputs = dict(inputs)
    targets = inputs.pop("labels")[:, 1:]  # position p predicts token p + 1
    trained = targets != IGNORE

    def only_trained(module: Any, args: tuple) -> tuple:
        return (args[0][:, :-1][trained.to(args[0].device)],) + args[1:]

    hook = head.register_forward_pre_hook(only_trained)
    try:
        logits = model(**inputs).logits.float()  # (trained positions, vocab)
    finally:
        hook.remove()
    loss = F.cross_entropy(logits, targets[trained].to(logits.device), reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else trained.sum())


def trains_on_kept_logits(cfg: TrainConfig, base: Any) -> bool:
    """Whether the trainer computes logits only where they are trained on: not with --liger
    (its fused linear cross-entropy already never materialises them), not with --all-logits,
    and only for transformers' own causal LMs (``base``, unwrapped from PEFT: a forward that
    projects the last hidden states through ``get_output_embeddings()``, the ones with
    ``logits_to_keep``)."""
    import inspect

    if cfg.liger or cfg.all_logits:
        return False
    return "logits_to_keep" in inspect.signature(base.forward).parameters and base.get_output_embeddings() is not None


def resolve_packing(cfg: TrainConfig, model: Any) -> tuple[bool, str]:
    """Packing pays off with variable-length attention kernels (FlashAttention), which skip
    the masked blocks. With SDPA or eager attention a packed row costs quadratic attention
    over the whole bin, and length-grouped batches were faster (docs/benchmarks.md).
    Returns the choice and the reason."""
    if cfg.packing is not None:
        return cfg.packing, "asked for"
    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    if "flash" in attn:
        return True, "default with FlashAttention's variable-length kernels"
    return False, f"default with {attn or 'this'} attention: length-grouped padded batches are cheaper"


def _capability() -> tuple[int, int] | None:
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def _checkpointing_field(arguments: type) -> str:
    """The TrainingArguments name for activation (gradient) checkpointing: later transformers 5
    releases renamed it and warn on the old name at every run."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _precision_flags(cfg: TrainConfig) -> dict[str, bool]:
    import torch

    if not torch.cuda.is_available() or cfg.dtype == "float32":
        return {"bf16": False, "fp16": False}
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and torch.cuda.is_bf16_supported()):
        return {"bf16": True, "fp16": False}
    return {"bf16": False, "fp16": True}  # T4 / V100: no bf16


def portable_checkpoints(end_ids: list[int]) -> Any:
    """A Trainer callback that makes every ``checkpoint-N`` folder readable by transformers 4
    as well, so OpenCompass can score a checkpoint directly."""
    from transformers import TrainerCallback

    class PortableCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                make_folder_portable(folder, end_ids=end_ids)

    return PortableCheckpoints()


def kit_trainer_class() -> Any:
    """The Trainer with two changes, both about what a run reports being true:

    - length grouping by the *real* token counts (:class:`LengthGroupedSampler`):
      transformers' sampler measures ``len(item["input_ids"])``, and an item here holds a list
      of examples, so it saw every item as length 1 and grouped nothing; it also shrinks its
      megabatches to a single batch on data sets below a few thousand rows;
    - a :class:`TokenMeter` fed with every batch actually trained on (real and computed
      tokens), whose figures join each training log line (TensorBoard, console, log history);
    - with ``kept_logits``, the training loss through :func:`loss_on_trained_positions`: the
      same loss and gradients, the LM head run only where a token is trained on;
    - the eval loss as the mean over every scored token of the eval set. The stock loop averages
      per-batch means weighted by batch size, so the same model scored with another
      ``per_device_batch`` got another eval loss (rows of a short batch counted more per token).
    """
    from transformers import Trainer

    class KitTrainer(Trainer):
        def __init__(self, *args, meter: TokenMeter, kept_logits: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            self.meter, self.kept_logits = meter, kept_logits
            self.train_started: float | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self.kept_logits or "labels" not in inputs:  # evaluation: the stock path
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            loss = loss_on_trained_positions(model, head, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                    and num_items_in_batch is not None:  # as the stock path: the count spans every rank
                ranks = self.accelerator.num_processes // (self.get_tp_size() if hasattr(self, "get_tp_size") else 1)
                loss = loss * (ranks if self.args.n_gpu <= 1 else self.args.n_gpu)
            return loss

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            import torch

            self._eval_sums = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # loss sum, tokens
            out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
            total, count = self.accelerator.reduce(self._eval_sums, reduction="sum").tolist()
            if count and f"{metric_key_prefix}_loss" in out.metrics:
                out.metrics[f"{metric_key_prefix}_loss"] = total / count
            return out

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            if loss is not None and "labels" in inputs:  # the batch's mean over the tokens it scores
                scored = int((inputs["labels"][:, 1:] != IGNORE).sum())
                self._eval_sums[0] += float(loss) * scored
                self._eval_sums[1] += scored
            return loss, logits, labels

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, SFTDataset):
                return LengthGroupedSampler(dataset.lengths(), self.args.per_device_train_batch_size,
                                            seed=self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def training_step(self, model, inputs, *args, **kwargs):
            if self.train_started is None:
                self.train_started = time.perf_counter()
            self.meter.add(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs, start_time=None, **kwargs):
            if "loss" in logs and self.train_started is not None:  # a training log line: every rank is here
                report = self.meter.report(time.perf_counter() - self.train_started, None)
                logs.update({"tokens/real": report["real_tokens"], "tokens/computed": report["computed_tokens"],
                             "tokens/trained": report["trained_tokens"],
                             "tokens/padding_efficiency": report["padding_efficiency"],
                             "tokens/real_per_s": report["real_tokens_per_s"]})
            return super().log(logs, start_time, **kwargs)

    return KitTrainer


def _reset_peak_memory() -> None:
    """Start the peak-memory figure at this run: an experiment sweep trains its variants one
    after another in one process, and each figure must be that variant's own."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident size (VmHWM)
    except OSError:
        pass


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:  # Linux: the peak resident size since _reset_peak_memory
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    except (OSError, AttributeError):  # elsewhere: the process's peak, which no call resets
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_sft(cfg: TrainConfig, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says and save the result. Returns the run summary (also written to
    ``run_summary.json`` in the output folder).

    Raises:
        UserError: bad data, impossible options, or an output folder that would be clobbered.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainingArguments
    from transformers.integrations import TensorBoardCallback

    local_rank, world = _rank_info()
    is_main = local_rank == 0 and int(os.environ.get("RANK", 0)) == 0
    out = resolve_output_dir(cfg)
    name = run_name(cfg)
    platform = current_platform()
    last = latest_complete_checkpoint(out) if out.is_dir() else None
    resume_from: str | None = None
    if cfg.resume:
        resume_from = last if cfg.resume == "latest" else cfg.resume
        if cfg.resume != "latest" and not Path(cfg.resume).is_dir():
            raise UserError(f"--resume {cfg.resume}: no such checkpoint folder")
        if resume_from is None and is_main:
            print(f"no checkpoint in {out} yet; starting from the beginning", file=sys.stderr)
    elif last is not None and not cfg.overwrite:
        raise UserError(f"{out} already has checkpoints ({Path(last).name}); pass --resume to continue, "
                        "--overwrite to start over, or another --run-name")

    _reset_peak_memory()
    model, tokenizer = build_model(cfg)
    packing, packing_why = resolve_packing(cfg, model)
    if is_main:
        attn = getattr(model.config, "_attn_implementation", "?")
        _, attn_why = choose_attention(cfg.attn, str(next(model.parameters()).device), _capability(),
                                       flash_attn_installed())
        print(f"attention: {attn} ({attn_why}); packing: {'on' if packing else 'off'} ({packing_why})"
              f"{'; liger-kernel on' if cfg.liger else ''}", file=sys.stderr)
    opts = RenderOptions(cfg.loss, cfg.system_prompt, cfg.no_system_prompt, cfg.max_len, cfg.too_long)
    tb_dirs = platform.tensorboard_dirs(out.parent, name)
    tb_dir = tb_dirs[0]
    args = TrainingArguments(
        output_dir=str(out), run_name=name, per_device_train_batch_size=cfg.per_device_batch,
        per_device_eval_batch_size=cfg.per_device_batch, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=max(cfg.save_steps, 1),
        save_total_limit=cfg.save_total_limit, eval_strategy="steps" if cfg.eval_share > 0 else "no",
        eval_steps=cfg.eval_steps, seed=cfg.seed, data_seed=cfg.seed, report_to="none",
        **{_checkpointing_field(TrainingArguments): cfg.gradient_checkpointing}, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not packing else "random",
        include_num_input_tokens_seen="no", ddp_find_unused_parameters=False,  # it counts padding: TokenMeter
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, deepspeed=cfg.deepspeed,
        **_precision_flags(cfg))

    with args.main_process_first(desc="tokenizing"):  # rank 0 tokenizes, the others then hit the cache
        data = prepare_data(cfg.data, tokenizer, opts, platform.cache_dir() / "tokenized",
                            cfg.max_bad_share, progress=is_main)
    train, evaluation = _split(data, cfg.eval_share, cfg.seed)
    train_ds = SFTDataset(train.input_ids, train.labels, packing, cfg.max_len)
    eval_ds = SFTDataset(evaluation.input_ids, evaluation.labels, packing, cfg.max_len) if evaluation else None
    if is_main:
        stats = data.stats
        print(f"data: {stats.get('kept', len(data))} rows ({'from cache' if stats.get('cached') else 'tokenized'}), "
              f"{len(train_ds)} training items{' (packed)' if packing else (' (length-grouped)' if cfg.group_by_length else ' (random batches)')}, "
              f"{len(eval_ds) if eval_ds else 0} eval items; {world} process(es)", file=sys.stderr)

    callbacks = list(extra_callbacks or [])
    if is_main:
        callbacks.append(portable_checkpoints(reply_end_ids(model, tokenizer)))
    if cfg.bench:
        from qwen_kit.eval.callback import BenchmarkCallback

        callbacks.append(BenchmarkCallback(tokenizer, [b.strip() for b in cfg.bench.split(",") if b.strip()],
                                           cfg.bench_steps, cfg.bench_limit, max_len=cfg.max_len))
    if is_main:  # one writer per folder: the run's own, plus e.g. AutoDL's /root/tf-logs panel
        for d in tb_dirs:
            cb = TensorBoardCallback(SummaryWriter(log_dir=str(d)))
            cb.logging_dir = str(d)  # the final evaluate() reopens a writer after train end: same folder
            callbacks.append(cb)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    meter = TokenMeter(params=int(estimate_params(base.config.to_dict())), layers=base.config.num_hidden_layers,
                       hidden=base.config.hidden_size, frozen_base=cfg.finetune != "full")
    kept_logits = trains_on_kept_logits(cfg, base)
    trainer = kit_trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                  data_collator=SFTCollator(packing, tokenizer.pad_token_id),
                                  processing_class=tokenizer, callbacks=callbacks, meter=meter, kept_logits=kept_logits)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    elapsed = time.perf_counter() - started
    peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    throughput = {**meter.report(elapsed, peak, world), "peak_tflops": peak / 1e12 if peak else None}
    if is_main:
        eff = throughput["padding_efficiency"]
        print(f"trained on {throughput['real_tokens']} real tokens of {throughput['computed_tokens']} computed "
              f"(padding efficiency {eff:.3f}), {throughput['real_tokens_per_s']:.1f} real tokens/s"
              + (f", MFU {throughput['mfu']:.1%}" if throughput["mfu"] is not None else ""), file=sys.stderr)
    metrics = dict(result.metrics)
    if eval_ds is not None:
        # an eval at the last step already scored this very model: reuse it rather than wait again
        last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
        ended_on_eval = last is not None and last.get("step") == trainer.state.global_step
        metrics.update({k: v for k, v in last.items() if k.startswith("eval_")} if ended_on_eval
                       else trainer.evaluate())
        metrics["eval_reply_loss"] = metrics.get("eval_loss")
        if cfg.loss != "response":  # one metric every variant shares: loss on the reply tokens alone
            reply = _reply_labels(evaluation, cfg, tokenizer, platform, is_main)
            metrics["eval_reply_loss"] = trainer.evaluate(SFTDataset(evaluation.input_ids, reply, packing, cfg.max_len),
                                                          metric_key_prefix="eval_reply")["eval_reply_loss"]

    summary = {"run_name": name, "output_dir": str(out), "tensorboard_dirs": [str(d) for d in tb_dirs], "world_size": world,
               "global_step": trainer.state.global_step, "resumed_from": resume_from, "packing": packing,
               "attention": getattr(base.config, "_attn_implementation", None), "liger": cfg.liger,
               "kept_logits": kept_logits,
               "train_loss": metrics.get("train_loss"), "eval_loss": metrics.get("eval_loss"),
               "eval_reply_loss": metrics.get("eval_reply_loss"),
               **throughput,
               "peak_memory_mb": _peak_memory_mb(), "train_seconds": elapsed,
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "total_params": sum(p.numel() for p in model.parameters()),
               "data": data.stats, "log_history": trainer.state.log_history, "config": asdict(cfg)}
    trainer.save_model(str(out))  # rank 0 only; LoRA runs save the adapter in PEFT format
    if is_main:
        name_base_model(out, cfg.model)
        save_tokenizer(tokenizer, out)
        make_folder_portable(out, end_ids=reply_end_ids(model, tokenizer))
        save_config(cfg, out / "qwen_kit_config.yaml")
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str),
                                              encoding="utf-8")
        print(f"saved to {out} (TensorBoard: tensorboard --logdir {tb_dir.parent})", file=sys.stderr)
    return summary
