"""GGUF export, judged by the readers that matter: llama.cpp itself (through llama-cpp-python in
.venv-llama, `make llama-venv`) and transformers' GGUF loader.

A file llama.cpp refuses or tokenizes differently is a failed export however well transformers
reads it, so the llama.cpp tests compare token ids, logits and greedy continuations with the HF
folder. They run in a subprocess with that venv's Python and are skipped, saying why, without it.
"""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch

from qwen_kit.errors import UserError
from qwen_kit.export.gguf import export_gguf
from qwen_kit.export.llamacpp import llama_python, run_llama
from tests.conftest import ROOT, make_dry_run, run_script

needs_llama = pytest.mark.skipif(llama_python() is None, reason="llama.cpp bindings not installed: run `make llama-venv` "
                                 "(or set QWEN_KIT_LLAMA_VENV) to judge GGUF exports with llama.cpp")

# A fixed bilingual ChatML text: specials, newlines, digits, runs of spaces, punctuation, emoji.
CHAT = [{"role": "system", "content": "你是图书馆的助手。You help students."},
        {"role": "user", "content": "When does the library open on Saturday, 2024-12-01?  Thanks!!"},
        {"role": "assistant", "content": "周六上午 9:00 开门，晚上十点关门。🙂"},
        {"role": "user", "content": "Can I borrow 12 books?\n\n\tAnd renew them online?"}]
PROMPTS = ["The library opens at", "图书馆周六几点开门？", "Question: how many books can a student borrow?\nAnswer:",
           "def add(a, b):\n    return"]
# Questions a real (demo or Qwen) model answers as a chat: English, Chinese, code
QUESTIONS = ["What is the capital of France?", "图书馆周六几点开门？", "Write a Python function that adds two numbers."]


def hf_reference(folder, round_to_f16: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if round_to_f16:  # the weights an f16 file holds, computed in fp32
        model = model.half().float()
    return model


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def assert_greedy_like(model, cases: list[list[int]], continuations: list[list[int]],
                       chosen_logits: list[list[float]]) -> None:
    """Each continuation is ``model``'s greedy one: at every step the token llama.cpp chose is the
    argmax of transformers' logits on the same prefix, and llama.cpp gave it the same logit (all
    steps in one forward pass per case), both within llama.cpp's f16 arithmetic error: 5e-3 of the
    logit range, as in the logits test.

    So a near-tie may go either way. Seen on the fine-tuned demo: a newline and ``<|im_end|>``
    0.015 apart in fp32, swapped by the f16 weights themselves. The logits are what catch a weight
    the export got slightly wrong: one MLP matrix scaled by 1.1 leaves the greedy tokens of the
    fine-tuned demo and of Qwen2.5-0.5B as they were, but moves a chosen token's logit by 0.42
    (tolerance 0.20) and 0.24 (tolerance 0.19)."""
    for ids, new, got in zip(cases, continuations, chosen_logits):
        logits = hf_logits(model, ids + new)[len(ids) - 1: -1]
        best = logits.max(-1)
        steps = torch.arange(len(new))
        gap = best.values - logits[steps, torch.tensor(new)]
        off = (torch.tensor(got) - logits[steps, torch.tensor(new)]).abs()
        tolerance = 5e-3 * logits.abs().max()
        wrong = [(step, new[step], int(best.indices[step]), round(float(gap[step]), 4), round(float(off[step]), 4))
                 for step in range(len(new)) if gap[step] > tolerance or off[step] > tolerance]
        assert not wrong, (f"llama.cpp's greedy steps after {ids} that transformers disagrees with (tolerance "
                           f"{float(tolerance):.3f}): (step, llama.cpp's token, transformers' token, how much lower "
                           f"transformers ranks it, llama.cpp's logit minus transformers') {wrong}")


def chat_prompts(tokenizer, questions=QUESTIONS) -> list[str]:
    """Each question as a one-turn chat, rendered by the folder's own template up to the reply."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def assert_llama_cpp_runs_like_the_folder(path, folder, tokenizer, prompts: list[str], n: int = 24) -> None:
    """The judge of an f16 export, one llama.cpp load: the fixed ChatML text (and PROMPTS) tokenize
    to the HF tokenizer's ids, and each of ``prompts`` continues greedily for ``n`` tokens as the HF
    ``folder`` does under transformers in fp32 (token for token up to near-ties, with the same logits: see assert_greedy_like)."""
    texts = [tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True), *PROMPTS]
    cases = [tokenizer(p).input_ids for p in prompts]
    got = run_llama({"model": str(path), "tokenize": texts, "greedy": [{"ids": c, "n": n} for c in cases]})
    assert got["tokens"] == [tokenizer(t).input_ids for t in texts]
    assert_greedy_like(hf_reference(folder), cases, got["greedy"], got["greedy_logits"])


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
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_llama_cpp_logits_equal_the_hf_folder(exports, tiny, head):
    ids = tiny.tokenizer(tiny.tokenizer.apply_chat_template(CHAT, tokenize=False), add_special_tokens=False).input_ids
    got = run_llama({"model": str(exports[head, "f16"]), "logits": [ids]})["logits"][0]
    ref = hf_logits(hf_reference(exports[head], round_to_f16=True), ids)
    # llama.cpp multiplies f16 weights with f16-rounded activations: ~1e-3 relative
    assert (torch.tensor(got)[:, : ref.shape[1]] - ref).abs().max() < 5e-3 * ref.abs().max()


@needs_llama
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_llama_cpp_tokenizes_and_continues_greedily_like_the_hf_folder(exports, tiny, head):
    assert_llama_cpp_runs_like_the_folder(exports[head, "f16"], exports[head], tiny.tokenizer, PROMPTS)


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


@needs_llama
@pytest.mark.slow
def test_make_sft_demo_exported_to_f16_runs_in_llama_cpp_like_its_folder(tmp_path):
    """`make sft-demo` for real (the demo's SmolLM2, a Llama, fully fine-tuned for 8 steps on the
    sample data), then scripts/export_gguf.py to f16: llama.cpp tokenizes and continues greedily
    like the fine-tuned folder (about a minute, most of it the training the user runs anyway)."""
    from transformers import AutoTokenizer

    out, path = tmp_path / "sft-demo", tmp_path / "sft-demo-f16.gguf"
    # the Makefile's own command line, with the run folder moved into tmp
    line = next(x for x in make_dry_run("sft-demo", f"ARGS=--output-dir {out}").splitlines() if "scripts/sft.py" in x)
    trained = run_script("sft.py", *shlex.split(line.split("scripts/sft.py", 1)[1]), cwd=ROOT, timeout=900)
    assert trained.returncode == 0, trained.stderr.decode()[-3000:]
    assert json.loads((out / "run_summary.json").read_text())["global_step"] == 8
    for checkpoint in out.glob("checkpoint-*"):  # weights + Adam state, not what is exported
        shutil.rmtree(checkpoint)
    done = run_script("export_gguf.py", str(out), "--out", str(path), "--quant", "f16")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert_llama_cpp_runs_like_the_folder(path, out, tokenizer, chat_prompts(tokenizer) + PROMPTS[:1])


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
