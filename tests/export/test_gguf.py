"""GGUF export, judged by the readers that matter: llama.cpp itself (through llama-cpp-python in
.venv-llama, `make llama-venv`) and transformers' GGUF loader.

A file llama.cpp refuses or tokenizes differently is a failed export however well transformers
reads it, so the llama.cpp tests compare token ids, logits and greedy continuations with the HF
folder. They run in a subprocess with that venv's Python and are skipped, saying why, without it.
"""

from __future__ import annotations

import json

import pytest
import torch

from qwen_kit.errors import UserError
from qwen_kit.export.gguf import export_gguf
from qwen_kit.export.llamacpp import llama_python, run_llama
from tests.conftest import make_dry_run, run_script

needs_llama = pytest.mark.skipif(llama_python() is None, reason="llama.cpp bindings not installed: run `make llama-venv` "
                                 "(or set QWEN_KIT_LLAMA_VENV) to judge GGUF exports with llama.cpp")

# A fixed bilingual ChatML text: specials, newlines, digits, runs of spaces, punctuation, emoji.
CHAT = [{"role": "system", "content": "你是图书馆的助手。You help students."},
        {"role": "user", "content": "When does the library open on Saturday, 2024-12-01?  Thanks!!"},
        {"role": "assistant", "content": "周六上午 9:00 开门，晚上十点关门。🙂"},
        {"role": "user", "content": "Can I borrow 12 books?\n\n\tAnd renew them online?"}]
PROMPTS = ["The library opens at", "图书馆周六几点开门？", "Question: how many books can a student borrow?\nAnswer:",
           "def add(a, b):\n    return"]


def hf_reference(folder, round_to_f16: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if round_to_f16:  # the weights an f16 file holds, computed in fp32
        model = model.half().float()
    return model


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    from transformers import GenerationConfig

    never = model.config.vocab_size + 10  # no stop token: both sides produce exactly n tokens
    # plain argmax: transformers 5 fills unset fields from the folder's generation config, whose
    # repetition_penalty (1.05) would apply under greedy decoding too
    plain = GenerationConfig(max_new_tokens=n, do_sample=False, repetition_penalty=1.0, eos_token_id=never,
                             pad_token_id=never)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), generation_config=plain)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def tiny_untied_dir(tiny_qwen_dir, tmp_path_factory):
    """The tiny Qwen2 with its own output head (Qwen2.5 from 3B up is untied)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen_kit.model.portable import save_model

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32, tie_word_embeddings=False)
    torch.manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    return save_model(model, tmp_path_factory.mktemp("untied") / "tiny-untied", AutoTokenizer.from_pretrained(tiny_qwen_dir))


@pytest.fixture(scope="module")
def exports(tiny_qwen_dir, tiny_untied_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    for head, folder in (("tied", tiny_qwen_dir), ("untied", tiny_untied_dir)):
        for quant in ("f16", "q8_0"):
            files[head, quant] = export_gguf(str(folder), out / f"{head}-{quant}.gguf", quant).path
    return {"tied": tiny_qwen_dir, "untied": tiny_untied_dir, **files}


def test_head_layout_is_kept(exports):
    import gguf

    names = {h: {t.name for t in gguf.GGUFReader(exports[h, "f16"]).tensors} for h in ("tied", "untied")}
    assert "output.weight" not in names["tied"] and "output.weight" in names["untied"]


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_transformers_reads_f16_back_with_the_same_logits(exports, head):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = exports[head, "f16"]
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(exports[head])
    ids = tokenizer.apply_chat_template(CHAT, tokenize=False)
    ids = tokenizer(ids, add_special_tokens=False).input_ids
    got = hf_logits(back, ids)
    # Against the folder's weights rounded to f16 the file is exact up to fp32 arithmetic
    assert (got - hf_logits(hf_reference(exports[head], round_to_f16=True), ids)).abs().max() < 1e-4
    assert back.config.tie_word_embeddings == (head == "tied")


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_transformers_reads_q8_0_back_within_quantisation_error(exports, head):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = exports[head, "q8_0"]
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(exports[head])(PROMPTS[0]).input_ids
    ref = hf_logits(hf_reference(exports[head]), ids)
    assert (hf_logits(back, ids) - ref).abs().max() < 0.02 * ref.abs().max()  # 8-bit blocks: ~1 % of the range


@needs_llama
def test_llama_cpp_tokenizes_like_the_hf_tokenizer(exports, tiny):
    text = tiny.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    texts = [text, *PROMPTS]
    got = run_llama({"model": str(exports["tied", "f16"]), "vocab_only": True, "tokenize": texts})["tokens"]
    assert got == [tiny.tokenizer(t).input_ids for t in texts]


@needs_llama
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_llama_cpp_logits_equal_the_hf_folder(exports, tiny, head):
    ids = tiny.tokenizer(tiny.tokenizer.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False).input_ids
    got = run_llama({"model": str(exports[head, "f16"]), "logits": [ids]})["logits"][0]
    ref = hf_logits(hf_reference(exports[head], round_to_f16=True), ids)
    # llama.cpp multiplies f16 weights with f16-rounded activations: ~1e-3 relative
    assert (torch.tensor(got)[:, : ref.shape[1]] - ref).abs().max() < 5e-3 * ref.abs().max()


@needs_llama
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_llama_cpp_greedy_continuations_equal_the_hf_folder(exports, tiny, head):
    cases = [tiny.tokenizer(p).input_ids for p in PROMPTS]
    got = run_llama({"model": str(exports[head, "f16"]), "greedy": [{"ids": c, "n": 24} for c in cases]})["greedy"]
    model = hf_reference(exports[head])
    assert got == [hf_greedy(model, c, 24) for c in cases]


def test_lora_adapter_is_merged_before_export(tiny_qwen_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = hf_reference(tiny_qwen_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    path = export_gguf(str(tiny_qwen_dir), tmp_path / "merged.gguf", "f16", adapter=str(tmp_path / "adapter")).path
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = list(range(3, 40))
    with torch.no_grad():
        expected = peft_model.merge_and_unload().half().float()(torch.tensor([ids])).logits[0]
    assert (hf_logits(back, ids) - expected).abs().max() < 1e-4
    assert (hf_logits(back, ids) - hf_logits(hf_reference(tiny_qwen_dir), ids)).abs().max() > 1e-2


def test_script_writes_the_file_and_its_modelfile(tiny_qwen_dir, tmp_path):
    done = run_script("export_gguf.py", str(tiny_qwen_dir), "--out", str(tmp_path / "m.gguf"), "--quant", "q4_0")
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "m.gguf").stat().st_size > 0 and (tmp_path / "m.Modelfile").is_file()


@pytest.mark.parametrize("case", ["not-gguf", "exists", "architecture", "no-model", "quant"])
def test_bad_input_is_refused_before_anything_is_written(tiny_qwen_dir, tmp_path, case):
    out, model, quant = tmp_path / "m.gguf", str(tiny_qwen_dir), "f16"
    if case == "not-gguf":
        out = tmp_path / "m.bin"
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "architecture":
        model = str(tmp_path / "gpt2")
        (tmp_path / "gpt2").mkdir()
        (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    elif case == "no-model":
        model = str(tmp_path / "missing")
    else:
        quant = "q4_k_m"
    with pytest.raises(UserError):
        export_gguf(model, out, quant)
    assert case != "exists" or out.read_bytes() == b"keep me"
    assert not list(tmp_path.glob("*.gguf.*")) and not list(tmp_path.glob("*.Modelfile"))


def test_script_reports_bad_input_in_one_line_with_exit_2(tmp_path):
    done = run_script("export_gguf.py", str(tmp_path / "missing"), "--out", str(tmp_path / "m.gguf"))
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("export_gguf.py: error:"), err


def test_make_gguf_runs_the_script():
    dry = make_dry_run("gguf", "MODEL=output/sft-demo", "QUANT=q8_0")
    assert "scripts/export_gguf.py output/sft-demo  --quant q8_0 --out output/gguf/sft-demo-q8_0.gguf" in dry


@pytest.mark.slow
def test_demo_llama_architecture_judged_by_llama_cpp(demo, tmp_path):
    """The demo's SmolLM2 (Llama): llama.cpp tokenizes alike and continues greedily like transformers."""
    if llama_python() is None:
        pytest.skip("llama.cpp bindings not installed: run `make llama-venv`")
    path = export_gguf("demo", tmp_path / "demo-f16.gguf", "f16").path
    text = demo.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    cases = [demo.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("What is the capital of France?", "Name three fruits.", "How do I borrow a book from a library?")]
    ids = [demo.tokenizer(c).input_ids for c in cases]
    got = run_llama({"model": str(path), "tokenize": [text, *PROMPTS], "greedy": [{"ids": i, "n": 24} for i in ids]})
    assert got["tokens"] == [demo.tokenizer(t).input_ids for t in [text, *PROMPTS]]
    model = hf_reference(demo.ref.path)
    assert got["greedy"] == [hf_greedy(model, i, 24) for i in ids]


@pytest.mark.parametrize("pre", [{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"},
                                 {"type": "Sequence", "pretokenizers": [
                                     {"type": "Split", "pattern": {"Regex": r"\p{N}{1,3}"}, "behavior": "Isolated"},
                                     {"type": "ByteLevel", "use_regex": False}]}], ids=["sentencepiece", "other-split"])
def test_tokenizers_llama_cpp_would_split_differently_are_refused(pre):
    from tokenizers import Tokenizer, models

    from qwen_kit.export.gguf import llama_pre_tokenizer

    described = json.loads(Tokenizer(models.BPE()).to_str())
    described["pre_tokenizer"] = pre
    with pytest.raises(UserError, match="pre-tokenizer"):
        llama_pre_tokenizer(described)
