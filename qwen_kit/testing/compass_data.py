"""Small synthetic copies of the six OpenCompass datasets, in OpenCompass's own file layout
(``<root>/data/mmlu/dev/<subject>_dev.csv``, ``hellaswag/hellaswag.jsonl``, …), so the built-in
evaluator and OpenCompass can be compared offline on identical files. The content is generated,
not real benchmark data."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

WORDS = ("river lamp winter market garden letter mountain coffee train bread song window "
         "paper stone cloud forest engine doctor teacher city island bridge").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def write_compass_data(root: str | Path, per_set: int = 6, seed: int = 0) -> Path:
    """Write ``root/data/...`` for mmlu, hellaswag, winogrande, ARC-e, ARC-c and BoolQ."""
    from qwen_kit.eval.datasets import MMLU_SUBJECTS

    rng = random.Random(seed)
    data = Path(root) / "data"
    for split, n in (("dev", 5), ("test", 2)):
        (data / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        for subject in MMLU_SUBJECTS:
            with open(data / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                for _ in range(n):
                    w.writerow([_sentence(rng, 6) + "?", *(_sentence(rng, 2) for _ in range(4)), rng.choice("ABCD")])
    (data / "hellaswag").mkdir(parents=True, exist_ok=True)
    with open(data / "hellaswag" / "hellaswag.jsonl", "w", encoding="utf-8") as f:
        for i in range(per_set):
            f.write(json.dumps({"query": f"Activity {i}: {_sentence(rng, 7)}", "choices": [_sentence(rng, 5) for _ in range(4)],
                                "gold": rng.randrange(4)}) + "\n")
    (data / "winogrande").mkdir(parents=True, exist_ok=True)
    with open(data / "winogrande" / "dev.jsonl", "w", encoding="utf-8") as f:
        for _ in range(per_set):
            f.write(json.dumps({"sentence": f"{_sentence(rng, 4)} _ {_sentence(rng, 5).lower()}.", "option1": rng.choice(WORDS),
                                "option2": rng.choice(WORDS), "answer": rng.choice("12")}) + "\n")
    for sub, name in (("ARC-e", "ARC-Easy-Dev"), ("ARC-c", "ARC-Challenge-Test")):
        (data / "ARC" / sub).mkdir(parents=True, exist_ok=True)
        with open(data / "ARC" / sub / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(per_set):
                f.write(json.dumps({"id": f"{sub}-{i}", "question": {"stem": _sentence(rng, 6) + "?", "choices": [
                    {"label": lab, "text": _sentence(rng, 3)} for lab in "ABCD"]}, "answerKey": rng.choice("ABCD")}) + "\n")
    # the *_clean_* configs read contamination annotations beside the data (fetched from GitHub
    # when missing); synthetic items are simply not annotated
    (data / "hellaswag" / "hellaswag_val_contamination_annotations.json").write_text("{}")
    (data / "ARC" / "ARC-c" / "ARC_c_test_contamination_annotations.json").write_text("{}")
    (data / "SuperGLUE" / "BoolQ").mkdir(parents=True, exist_ok=True)
    with open(data / "SuperGLUE" / "BoolQ" / "val.jsonl", "w", encoding="utf-8") as f:
        for _ in range(max(per_set, 10)):
            f.write(json.dumps({"question": _sentence(rng, 5).lower(), "passage": _sentence(rng, 12) + ".",
                                "label": rng.choice(["true", "false"])}) + "\n")
    return data
