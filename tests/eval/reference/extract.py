"""Turn OpenCompass prediction files into the reference JSON the agreement tests read.

    python tests/eval/reference/extract.py mcq WORKDIR > tests/eval/reference/mcq_small_opencompass.json
    python tests/eval/reference/extract.py six WORKDIR > tests/eval/reference/six_configs_opencompass.json

WORKDIR is OpenCompass's -w folder; the newest run in it is read (README.md beside this file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _item(row: dict) -> tuple[dict, str]:
    labels = {k[len("label: "):]: v for k, v in row.items() if k.startswith("label: ")}
    key = "PPL" if all("PPL" in v for v in labels.values()) else "Loglikelihood"
    return {label: v[key] for label, v in labels.items()}, key


def main(kind: str, work: str) -> None:
    run = sorted(p for p in Path(work).iterdir() if p.is_dir())[-1]
    files = sorted((run / "predictions").glob("*/*.json"))
    out: dict = {}
    for f in files:
        rows = json.loads(f.read_text(encoding="utf-8"))
        items = {}
        for index, row in rows.items():
            scores, _ = _item(row)
            items[index] = {"prediction": row["prediction"], "gold": row["gold"],
                            ("ppl" if kind == "mcq" else "scores"): scores}
        out[f.stem] = items
    result = out[next(iter(out))] if kind == "mcq" else out
    json.dump(result, sys.stdout, indent=None if kind == "six" else 0, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
