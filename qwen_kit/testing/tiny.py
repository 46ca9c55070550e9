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
    """A PreTrainedTokenizerFast with Qwen2.5's special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
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
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=32768)
    fast.chat_template = chatml_template()
    return fast


def build_tiny_qwen(path: str | Path, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                    vocab_size: int = 1200) -> Path:
    """Write a tiny Qwen2ForCausalLM + tokenizer to ``path`` and return it.

    The generation config ends replies on ``<|im_end|>`` and ``<|endoftext|>``, like Qwen2.5-Instruct.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from qwen_kit.model.portable import save_tokenizer

    path = Path(path)
    tokenizer = build_tiny_tokenizer(vocab_size)
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    return path
