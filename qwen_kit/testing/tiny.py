"""A tiny Qwen2 model with a real byte-level BPE tokenizer, built offline in seconds.

The tokenizer is trained by the ``tokenizers`` library on a small English + Chinese
corpus, carries Qwen2.5's special tokens and Qwen2.5's real ChatML chat template
(including the default system prompt it injects), so prompt rendering, label masks
and stopping behave exactly as with a real Qwen2.5 model; only the weights are random.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus() -> list[str]:
    text = resources.files("qwen_kit.testing").joinpath("corpus.txt").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # A few hundred lines: the corpus, plus pairwise joins so merges see varied contexts.
    return lines + [f"{a} {b}" for a, b in zip(lines, lines[1:] + lines[:1])] * 4


def build_tiny_tokenizer(vocab_size: int = 1200):
    """A PreTrainedTokenizerFast with Qwen2.5's special tokens and chat template.

    As in Qwen2.5, the special tokens come after the learned vocabulary (so no id of
    ``<|endoftext|>``, ``<|im_start|>`` or ``<|im_end|>`` is 0: code that assumes ``pad = 0``
    shows up), there is no BOS token, EOS is ``<|im_end|>`` and padding is ``<|endoftext|>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qwen_kit.model.load import chatml_template

    tok = Tokenizer(models.BPE())
    # Qwen2's own normaliser and pre-tokenizer (digits split one by one, ...): transformers 5
    # loads any qwen2 tokenizer as Qwen2Tokenizer with these rules, transformers 4 (OpenCompass's
    # venv) uses what tokenizer.json says, so only with them do both tokenize alike
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=131072)
    fast.chat_template = chatml_template()
    return fast


# Qwen2.5-0.5B-Instruct's config.json, for the values a small fixture can keep as they are
# (head size, RoPE base, norm epsilon, windows, tied embeddings, 2:14 grouped KV heads in spirit).
QWEN25_05B = {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
              "sliding_window": 32768, "max_window_layers": 21, "use_sliding_window": False,
              "tie_word_embeddings": True, "hidden_act": "silu", "attention_dropout": 0.0, "head_dim": 64}


def build_tiny_qwen(path: str | Path, hidden_size: int = 128, num_layers: int = 2, seed: int = 0,
                    vocab_size: int = 1200, dtype: str = "float32") -> Path:
    """Write a tiny Qwen2ForCausalLM + tokenizer to ``path`` through the kit's own save, and return it.

    Shaped like Qwen2.5 where a kernel or a reader could care: 64-wide heads (``hidden_size``
    must be a multiple of 64), grouped KV heads, every matrix dimension a multiple of 64
    (bitsandbytes' CPU 4-bit kernels need that), the embedding padded past the tokenizer like
    Qwen's 151,936 rows for 151,665 tokens, RoPE base 1e6 (the library default, 10,000, is
    exactly the value at which a dropped ``rope_theta`` goes unnoticed), and a generation config
    that ends replies on ``<|im_end|>`` or ``<|endoftext|>`` with Qwen2.5-Instruct's sampling.
    ``dtype="bfloat16"`` saves the weights and the config's dtype as the Qwen2.5 checkpoints on
    the hub have them.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from qwen_kit.model.portable import QWEN25_SAMPLING, save_model

    if hidden_size % 64:
        raise ValueError(f"hidden_size must be a multiple of 64 (64-wide heads), got {hidden_size}")
    path = Path(path)
    tokenizer = build_tiny_tokenizer(vocab_size)
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    heads = hidden_size // QWEN25_05B["head_dim"]
    config = Qwen2Config(vocab_size=-(-len(tokenizer) // 128) * 128, hidden_size=hidden_size,
                         intermediate_size=hidden_size * 3, num_hidden_layers=num_layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot, **QWEN25_05B)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot,
                                               **QWEN25_SAMPLING)
    save_model(model, path, tokenizer)
    return path
