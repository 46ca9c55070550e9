"""Multiple-choice items built exactly as OpenCompass builds them for its configs.

Each item is one question with one full text per label; the model scores every text and the
label with the lowest perplexity (``ppl``) or highest log-likelihood (``ll``) wins — the rules
of OpenCompass's PPLInferencer and LLInferencer with a base HF model. The prompt strings below
were checked character by character against OpenCompass 0.5.4's own predictions files
(``tests/eval/reference``).

Data files are OpenCompass's, in its layout under ``<root>/data/``; ``make eval-data`` fetches
them. The custom format is OpenCompass's too: ``question, A, B, C, D, answer`` (.jsonl or .csv).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qwen_kit.errors import UserError
from qwen_kit.jsonl import read_jsonl

MMLU_SUBJECTS = ('college_biology', 'college_chemistry', 'college_computer_science', 'college_mathematics', 'college_physics', 'electrical_engineering', 'astronomy', 'anatomy', 'abstract_algebra', 'machine_learning', 'clinical_knowledge', 'global_facts', 'management', 'nutrition', 'marketing', 'professional_accounting', 'high_school_geography', 'international_law', 'moral_scenarios', 'computer_security', 'high_school_microeconomics', 'professional_law', 'medical_genetics', 'professional_psychology', 'jurisprudence', 'world_religions', 'philosophy', 'virology', 'high_school_chemistry', 'public_relations', 'high_school_macroeconomics', 'human_sexuality', 'elementary_mathematics', 'high_school_physics', 'high_school_computer_science', 'high_school_european_history', 'business_ethics', 'moral_disputes', 'high_school_statistics', 'miscellaneous', 'formal_logic', 'high_school_government_and_politics', 'prehistory', 'security_studies', 'high_school_biology', 'logical_fallacies', 'high_school_world_history', 'professional_medicine', 'high_school_mathematics', 'college_medicine', 'high_school_us_history', 'sociology', 'econometrics', 'high_school_psychology', 'human_aging', 'us_foreign_policy', 'conceptual_physics')


@dataclass
class McqItem:
    dataset: str  # the dataset (MMLU: lukaemon_mmlu_<subject>, as OpenCompass names it)
    index: int
    labels: list[str]
    texts: list[str]  # the full text scored for each label
    gold: str
    mode: str = "ppl"  # "ppl": lowest mean NLL wins; "ll": highest continuation log-likelihood wins
    cont: str = ""  # ll mode: the continuation whose token count OpenCompass masks


# -- where the data is ------------------------------------------------------------------------
def data_roots() -> list[Path]:
    """Where OpenCompass looks, in order: $COMPASS_DATA_CACHE, the current folder, ~/.cache/opencompass."""
    roots = []
    if os.environ.get("COMPASS_DATA_CACHE"):
        roots.append(Path(os.environ["COMPASS_DATA_CACHE"]).expanduser())
    roots += [Path.cwd(), Path.home() / ".cache" / "opencompass"]
    return roots


def find_data(relative: str, data_root: str | Path | None = None) -> Path:
    roots = [Path(data_root).expanduser()] if data_root else data_roots()
    for root in roots:
        path = root / "data" / relative
        if path.exists():
            return path
    where = " or ".join(str(r / "data" / relative) for r in roots)
    raise UserError(f"dataset files not found: expected {where}. Fetch them once with `make eval-data` "
                    "(docs/evaluation.md explains how to carry them to an offline machine)")


# -- the six OpenCompass configs --------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(path, "dataset", errors="ignore")]


def _mmlu_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for number, row in enumerate(rows, start=1):
        if len(row) != 6:
            raise UserError(f"{path}: line {number} has {len(row)} fields; MMLU rows are question, A, B, C, D, answer")
    return rows


def _mmlu_question(row: list[str]) -> str:
    return f"{row[0]}\nA. {row[1]}\nB. {row[2]}\nC. {row[3]}\nD. {row[4]}"


def mmlu(root: Path | None, max_len: int, count_tokens: Callable[[str], int]) -> list[McqItem]:
    """mmlu_ppl (mmlu_ppl_ac766d): 5 fixed dev examples, then the question; "Answer: X" scored."""
    items = []
    for subject in MMLU_SUBJECTS:
        dev = _mmlu_rows(find_data(f"mmlu/dev/{subject}_dev.csv", root))
        test = _mmlu_rows(find_data(f"mmlu/test/{subject}_test.csv", root))
        hint = f"The following are multiple choice questions (with answers) about  {subject.replace('_', ' ')}.\n\n"
        for i, row in enumerate(test):
            shots = [dev[j] for j in range(5) if j < len(dev)]
            while True:
                ice = "\n".join(f"{_mmlu_question(s)}\nAnswer: {s[5]}\n" for s in shots) + "\n"
                texts = [f"{hint}{ice}{_mmlu_question(row)}\nAnswer: {opt}" for opt in "ABCD"]
                # OpenCompass drops in-context examples from the end until the prompt fits
                if not shots or max(count_tokens(t) for t in texts) <= max_len:
                    break
                shots = shots[:-1]
            items.append(McqItem(f"lukaemon_mmlu_{subject}", i, list("ABCD"), texts, row[5]))
    return items


def hellaswag(root: Path | None, **_: Any) -> list[McqItem]:
    """hellaswag_clean_ppl: the context, a newline, each ending."""
    items = []
    for i, row in enumerate(_jsonl(find_data("hellaswag/hellaswag.jsonl", root))):
        ctx = row["query"].split(": ", 2)[-1]
        items.append(McqItem("hellaswag", i, ["0", "1", "2", "3"], [f"{ctx}\n{c}" for c in row["choices"][:4]],
                             str(row["gold"])))
    return items


def winogrande(root: Path | None, **_: Any) -> list[McqItem]:
    """winogrande_ll: the sentence with each option filled in, scored by log-likelihood."""
    items = []
    for i, row in enumerate(_jsonl(find_data("winogrande/dev.jsonl", root))):
        s = row["sentence"]
        items.append(McqItem("winogrande", i, ["1", "2"], [s.replace("_", row["option1"]), s.replace("_", row["option2"])],
                             str(row["answer"]), mode="ll", cont=s.split("_")[1]))
    return items


def _arc(relative: str, name: str, root: Path | None) -> list[McqItem]:
    items = []
    for row in _jsonl(find_data(relative, root)):
        q = row["question"]
        if len(q["choices"]) != 4:
            continue  # OpenCompass skips questions without exactly four choices
        labels = [c["label"] for c in q["choices"]]
        gold = "ABCD"[labels.index(row["answerKey"])]
        texts = [f"Question: {q['stem']}\nAnswer: \n{c['text']}" for c in q["choices"]]
        items.append(McqItem(name, len(items), list("ABCD"), texts, gold))
    return items


def arc_e(root: Path | None, **_: Any) -> list[McqItem]:
    """ARC_e_ppl (ARC_e_ppl_a450bd): "Question: …\nAnswer: ", a newline, each choice's text."""
    return _arc("ARC/ARC-e/ARC-Easy-Dev.jsonl", "ARC-e", root)


def arc_c(root: Path | None, **_: Any) -> list[McqItem]:
    """ARC_c_clean_ppl: as ARC-e, on the ARC-Challenge test set."""
    return _arc("ARC/ARC-c/ARC-Challenge-Test.jsonl", "ARC-c-test", root)


def boolq(root: Path | None, **_: Any) -> list[McqItem]:
    """SuperGLUE_BoolQ_few_shot_ppl: passage, question, "Yes"/"No". The config's in-context
    template has no ``</E>`` marker, so OpenCompass never inserts its five examples: zero-shot."""
    items = []
    for i, row in enumerate(_jsonl(find_data("SuperGLUE/BoolQ/val.jsonl", root))):
        base = f"{row['passage']}\nQuestion: {row['question']}?\n"
        gold = {"true": "A", "false": "B"}[str(row["label"]).lower()]
        # label order as in the config's template: B (No) first, so a tie goes to B
        items.append(McqItem("BoolQ", i, ["B", "A"], [base + "No", base + "Yes"], gold))
    return items


BUILTIN = {"mmlu_ppl": mmlu, "hellaswag_clean_ppl": hellaswag, "winogrande_ll": winogrande, "ARC_e_ppl": arc_e,
           "ARC_c_clean_ppl": arc_c, "SuperGLUE_BoolQ_few_shot_ppl": boolq}
DEFAULT_DATASETS = tuple(BUILTIN)


# -- custom files -----------------------------------------------------------------------------
def custom_mcq(path: str | Path) -> list[McqItem]:
    """OpenCompass's custom multiple-choice format: ``question``, options ``A``, ``B``, … (as many
    consecutive letters as the first row has), ``answer``; .jsonl or .csv. Scored like
    ``--custom-dataset-data-type mcq --custom-dataset-infer-method ppl``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p} does not exist")
    if p.suffix == ".jsonl":
        rows = read_jsonl(p, "question")
    elif p.suffix == ".csv":
        with open(p, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise UserError(f"{p} is empty; it needs a header row: question,A,B,C,D,answer")
            rows = [(number, dict(zip(header, row))) for number, row in enumerate(reader, start=2)]
    else:
        raise UserError(f"{p}: custom datasets are .jsonl or .csv files (OpenCompass's format)")
    if not rows:
        raise UserError(f"{p} has no questions")
    first = rows[0][1]
    options = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if letter not in first:
            break
        options.append(letter)
    if len(options) < 2:
        raise UserError(f"{p}: line {rows[0][0]} needs option columns A, B, ... (at least two) beside question and answer")
    items = []
    name = p.name.split(".")[0]
    for number, row in rows:
        missing = [k for k in ["question", *options, "answer"] if not str(row.get(k, "") or "").strip()]
        if missing:
            raise UserError(f"{p}: line {number} has no {', '.join(missing)}; every row needs question, "
                            f"{', '.join(options)} and answer")
        answer = str(row["answer"]).strip()
        if answer not in options:
            raise UserError(f"{p}: line {number} answer {answer!r} is not one of {', '.join(options)}")
        question = "Question: {}".format(row["question"]) + "".join(f"\n{o}. {row[o]}" for o in options)
        items.append(McqItem(name, len(items), options, [f"{question}\nAnswer: {o}" for o in options], answer))
    return items


def load_items(name: str, data_root: str | Path | None = None, max_len: int = 2048,
               count_tokens: Callable[[str], int] | None = None) -> list[McqItem]:
    """Items of a built-in dataset (by its OpenCompass config name) or of a custom file."""
    if name in BUILTIN:
        root = Path(data_root) if data_root else None
        return BUILTIN[name](root, max_len=max_len, count_tokens=count_tokens or (lambda t: len(t) // 3))
    if name.endswith((".jsonl", ".csv")) or Path(name).is_file():
        return custom_mcq(name)
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(BUILTIN)}, or a custom .jsonl/.csv file "
                    "(question, A, B, C, D, answer)")
