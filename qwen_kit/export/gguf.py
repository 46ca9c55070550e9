"""A model folder (or a LoRA adapter merged into its base) -> one GGUF file that llama.cpp reads.

Built on ggml's own ``gguf`` library: its tensor-name tables, its quantisers and its writer.
What the file must say is what llama.cpp reads, learnt from its converter and loader:

- the tokenizer as ``gpt2`` (byte-level BPE): every id up to the model's (padded) vocabulary
  size, with a token type (normal, control for special added tokens, user-defined for the
  other added tokens, unused for padding rows), the merges as ``"a b"`` strings, and the name
  of the pre-tokenizer llama.cpp must run (``qwen2``, ``gpt-2``, ``smollm``). llama.cpp's own
  converter recognises a pre-tokenizer by hashing the tokens of a test string; the kit reads it
  from the tokenizer's own description instead, so a fine-tune with its base's tokenizer needs no
  table of known hashes, and a pre-tokenizer llama.cpp has no name for is refused, not guessed;
- bos/eos/eot/pad ids and whether a BOS is prepended, taken from what the HF tokenizer does;
- the chat template, so llama.cpp and LM Studio render prompts as transformers does;
- Llama's q/k projections re-ordered for llama.cpp's rotary layout (Qwen2 uses the other layout,
  which llama.cpp applies to its tensors as they are);
- norms and biases in F32, the rest in the chosen type; a matrix whose rows do not split into
  the type's blocks falls back to F16, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from qwen_kit.errors import UserError

# --quant value -> (file type recorded in the header, tensor type of the matrices)
QUANTS = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "bf16": ("MOSTLY_BF16", "BF16"),
          "q8_0": ("MOSTLY_Q8_0", "Q8_0"), "q5_1": ("MOSTLY_Q5_1", "Q5_1"), "q5_0": ("MOSTLY_Q5_0", "Q5_0"),
          "q4_1": ("MOSTLY_Q4_1", "Q4_1"), "q4_0": ("MOSTLY_Q4_0", "Q4_0")}
# Below 8 bits the embedding (and the output head, which is the embedding when tied) stays Q8_0:
# llama.cpp's quantize tool likewise spends more bits on these two than on the blocks.
LOW_BIT = {"q5_1", "q5_0", "q4_1", "q4_0"}
ARCHITECTURES = {"Qwen2ForCausalLM": "QWEN2", "LlamaForCausalLM": "LLAMA"}
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class GGUFExport:
    """What :func:`export_gguf` wrote.

    Attributes:
        path: the ``.gguf`` file.
        modelfile: the ollama Modelfile beside it (None with ``modelfile=False``).
        architecture: llama.cpp's name (``qwen2``, ``llama``).
        pre_tokenizer: the pre-tokenizer name written for llama.cpp.
        tensor_types: tensor name -> GGML type written.
        fell_back: matrices that could not take the chosen type and were written as F16.
    """

    path: Path
    modelfile: Path | None
    architecture: str
    pre_tokenizer: str
    tensor_types: dict[str, str] = field(default_factory=dict)
    fell_back: list[str] = field(default_factory=list)


def llama_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer a ``tokenizer.json`` describes.

    Raises:
        UserError: a tokenizer llama.cpp would split differently (not byte-level BPE, an
            unknown split rule, or a normaliser other than NFC).
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"the tokenizer is {model.get('type') or 'not BPE'}; GGUF export supports byte-level BPE "
                        "tokenizers (Qwen2, Qwen2.5, SmolLM2)")
    normalizer = tokenizer_json.get("normalizer")
    # llama.cpp does not normalise; NFC changes nothing on text that is already NFC (almost all text)
    if normalizer not in (None, {"type": "NFC"}):
        raise UserError(f"the tokenizer normalises text ({normalizer.get('type')}), which llama.cpp does not do; "
                        "GGUF export supports tokenizers without a normaliser (or NFC)")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # GPT-2's split after every digit alone: llama.cpp's "smollm" (also "starcoder")
    if (kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True)
            and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT and steps[0].get("behavior") == "Isolated"):
        return "qwen2"
    raise UserError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one the GGUF export "
                    "knows llama.cpp's name for (qwen2, gpt-2, smollm); export a Qwen2.5 or SmolLM2 fine-tune")


def _merges(tokenizer_json: dict[str, Any]) -> list[str]:
    merges = tokenizer_json["model"].get("merges") or []
    # tokenizers writes merges either as "a b" strings or (since 0.20) as [a, b] pairs
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    if len(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embedding rows; "
                        "resize the model's embeddings (model.resize_token_embeddings) before exporting")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (Qwen pads 151,665 tokens to 151,936)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _special_ids(tokenizer: Any, config: dict[str, Any], end_ids: list[int]) -> dict[str, Any]:
    """The ids llama.cpp needs, as the HF tokenizer behaves (not as its config files say)."""
    probe = "a"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.get("bos_token_id")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (end_ids[0] if end_ids else None)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eot = im_end if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end >= 0 else None
    return {"bos": bos, "eos": eos, "eot": eot, "pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
            "add_bos": len(full) > len(plain) and full[0] != plain[0],
            "add_eos": len(full) > len(plain) and full[-1] != plain[-1]}


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    if (rope.get("rope_type") or "default") != "default" or config.get("rope_scaling"):
        raise UserError(f"the model uses RoPE scaling ({rope or config.get('rope_scaling')}); GGUF export supports "
                        "the default RoPE only")
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise UserError("config.json names no rope_theta; run `make portable MODEL=<folder>` or re-save the model")
    return float(theta)


def _safetensors(folder: Path) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} holds no .safetensors weights; re-save it with the kit "
                        "(make merge, or save_pretrained(..., safe_serialization=True))")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _permute_for_llama(weight: Any, heads: int) -> Any:
    # HF Llama rotates the two halves of each head; llama.cpp rotates neighbouring pairs:
    # reorder each head's rows (half i, then half j) into interleaved (i0 j0 i1 j1 ...)
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(folder: str | Path, out: str | Path, quant: str = "f16", name: str | None = None) -> GGUFExport:
    """Write the HF model folder ``folder`` as one GGUF file ``out`` with tensors of type ``quant``.

    Raises:
        UserError: an unknown ``quant``, an architecture or tokenizer llama.cpp would not read
            as transformers does, missing weights.
    """
    import gguf
    import numpy as np
    from transformers import AutoTokenizer, GenerationConfig

    from qwen_kit.model.load import eos_token_ids

    folder, out = Path(folder), Path(out)
    if quant not in QUANTS:
        raise UserError(f"--quant {quant} is not supported; choose one of {', '.join(QUANTS)}")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hf_arch = (config.get("architectures") or ["?"])[0]
    if hf_arch not in ARCHITECTURES:
        raise UserError(f"{folder} is a {hf_arch}; GGUF export supports {', '.join(ARCHITECTURES)} "
                        "(the Qwen2/Qwen2.5 family and the demo model)")
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[hf_arch])
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    file_type, matrix_type = QUANTS[quant]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{folder} has no fast tokenizer (tokenizer.json); GGUF export reads the tokenizer from it")
    tokenizer_json = json.loads(backend.to_str())  # what transformers really runs, not only what the file says
    pre = llama_pre_tokenizer(tokenizer_json)
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = GenerationConfig()
    end_ids = eos_token_ids(type("Gen", (), {"generation_config": generation})(), tokenizer)
    special = _special_ids(tokenizer, config, end_ids)

    layers, hidden, heads = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    vocab_size = config["vocab_size"]
    tied = bool(config.get("tie_word_embeddings", False))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)[1])
    # tensors spool to a temporary file past 256 MiB: memory stays bounded for 7B models
    writer = gguf.GGUFWriter(str(staging), arch_name, use_temp_file=True)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or folder.name)
        writer.add_block_count(layers)
        writer.add_context_length(config.get("max_position_embeddings", 4096))
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        writer.add_vocab_size(vocab_size)
        writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = _token_table(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(_merges(tokenizer_json))
        for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                         ("eot", writer.add_eot_token_id), ("pad", writer.add_pad_token_id),
                         ("unk", writer.add_unk_token_id)):
            if special[key] is not None:
                add(int(special[key]))
        writer.add_add_bos_token(bool(special["add_bos"]))
        writer.add_add_eos_token(bool(special["add_eos"]))
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)

        names = gguf.get_tensor_name_map(arch, layers)
        types_written: dict[str, str] = {}
        fell_back: list[str] = []
        seen_output = False
        for hf_name, tensor in _safetensors(folder):
            if hf_name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd when the file has no output.weight
            new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                raise UserError(f"{folder}: tensor {hf_name} has no GGUF name for {arch_name}; "
                                "is this a plain (merged) model folder?")
            seen_output |= new_name == "output.weight"
            data = tensor.float().numpy()
            if arch_name == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
                data = _permute_for_llama(data, heads if "q_proj" in hf_name else kv_heads)
            if data.ndim <= 1 or new_name.endswith("_norm.weight"):
                qtype = gguf.GGMLQuantizationType.F32
            elif quant in LOW_BIT and new_name in ("token_embd.weight", "output.weight"):
                qtype = gguf.GGMLQuantizationType.Q8_0
            else:
                qtype = getattr(gguf.GGMLQuantizationType, matrix_type)
            try:
                packed = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
            except gguf.QuantError:
                fell_back.append(new_name)
                qtype = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
            writer.add_tensor(new_name, packed, raw_dtype=qtype)
            types_written[new_name] = qtype.name
        if not tied and not seen_output:
            raise UserError(f"{folder}: config.json says the output head is not tied, but there is no lm_head.weight")

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # mkstemp made it private; the file is an ordinary output
        os.replace(staging, out)
    finally:
        writer.close()
        staging.unlink(missing_ok=True)
    return GGUFExport(out, None, arch_name, pre, types_written, fell_back)


def export_gguf(model: str, out: str | Path, quant: str = "f16", adapter: str | None = None,
                modelfile: bool = True, overwrite: bool = False) -> GGUFExport:
    """Export ``model`` (any value the kit's resolver accepts: ``demo``, a folder, a hub id, an
    adapter folder), with ``adapter`` merged in first when given, to the GGUF file ``out``, and
    write an ollama ``Modelfile`` beside it.

    Raises:
        UserError: ``out`` not a .gguf path or already there (without ``overwrite``), the
            model cannot be resolved or exported (see :func:`write_gguf`).
    """
    from qwen_kit.model.resolve import resolve_model

    out = Path(out).expanduser()
    if out.suffix != ".gguf":
        raise UserError(f"--out {out} must name a .gguf file, e.g. --out output/my-model-f16.gguf")
    if quant not in QUANTS:
        raise UserError(f"--quant {quant} is not supported; choose one of {', '.join(QUANTS)}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    ref = resolve_model(model)
    adapter = adapter or (str(ref.adapter) if ref.adapter else None)
    workdir = None
    try:
        folder = ref.path
        if adapter:
            from qwen_kit.model.merge import merge_adapter

            workdir = Path(tempfile.mkdtemp(prefix=".merge-", dir=out.parent if out.parent.exists() else None))
            folder = merge_adapter(adapter, str(workdir / "merged"), base=str(ref.path))
        name = Path(adapter).name if adapter else (ref.path.name if ref.source != "hub" else model)
        result = write_gguf(folder, out, quant, name=name)
        if modelfile:
            from qwen_kit.export.ollama import write_modelfile

            result.modelfile = write_modelfile(folder, result.path)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    size = result.path.stat().st_size / 2**20
    extra = f"; {len(result.fell_back)} matrices kept as F16 (rows not a multiple of the block)" if result.fell_back else ""
    print(f"wrote {result.path} ({size:.1f} MiB, {result.architecture}, {quant}, pre-tokenizer {result.pre_tokenizer}"
          f"{extra})" + (f" and {result.modelfile}" if result.modelfile else ""), file=sys.stderr)
    return result
