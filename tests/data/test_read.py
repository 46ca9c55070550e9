"""Reading data files, and what users hear about broken ones (real malformed files)."""

from __future__ import annotations

import json

import pytest

from qwen_kit.data.prepare import prepare_data
from qwen_kit.data.read import read_examples
from qwen_kit.data.render import RenderOptions
from qwen_kit.errors import UserError

ALPACA = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(40)]


def test_every_format_gives_the_same_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA))
    (tmp_path / "train.csv").write_text("instruction,input,output\n" + "\n".join(
        f"{r['instruction']},,{r['output']}" for r in ALPACA))
    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "a.parquet")
    Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    results = [read_examples(str(tmp_path / n))[0] for n in ("a.json", "a.jsonl", "train.csv", "a.parquet", "saved")]
    for examples in results:
        assert [e.messages for e in examples] == [e.messages for e in results[0]]
    assert results[0][3].messages == [{"role": "user", "content": "Question 3?"},
                                      {"role": "assistant", "content": "Answer 3."}]


def test_sharegpt_and_alpaca_input_are_understood(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"instruction": "Translate.", "input": "我喜欢茶。", "output": "I like tea."}]
    (tmp_path / "mix.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    ex, _ = read_examples(str(tmp_path / "mix.jsonl"))
    assert ex[0].messages[1] == {"role": "assistant", "content": "hello"}
    assert ex[1].messages[0]["content"] == "Translate.\n\n我喜欢茶。"


def test_truncated_json_names_file_and_line(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(ALPACA, indent=1)[:500])
    with pytest.raises(UserError, match=r"cut.json: not valid JSON at line \d+") as err:
        read_examples(str(path))
    assert "truncated" in str(err.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n' + '{"instruction": "你好", "output": "b"}'.encode("gbk"))
    with pytest.raises(UserError, match="gbk.jsonl: line 2 is not valid UTF-8"):
        read_examples(str(path))


def test_missing_columns_and_empty_outputs_are_counted_and_limited(tmp_path, capsys):
    rows = ALPACA[:38] + [{"instruction": "no output field"}, {"instruction": "empty", "input": "", "output": "  "}]
    path = tmp_path / "some_bad.json"
    path.write_text(json.dumps(rows))
    examples, report = read_examples(str(path), max_bad_share=0.1)
    assert len(examples) == 38 and [r for r, _ in report.bad] == [39, 40]
    assert "missing field(s) output" in report.bad[0][1] and "empty 'output'" in report.bad[1][1]
    with pytest.raises(UserError, match=r"skipped 2 of 40 rows .*row 39: missing field.* more than the 1% allowed"):
        read_examples(str(path), max_bad_share=0.01)


def test_a_file_of_only_wrong_columns_is_refused(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("question,answer\nhi,hello\n")
    with pytest.raises(UserError, match="row 2: missing field"):
        read_examples(str(path))


def test_a_100k_token_row_is_truncated_or_dropped_and_counted(tiny, tmp_path):
    rows = ALPACA[:5] + [{"instruction": "Summarise.", "input": "word " * 100_000, "output": "Short."}]
    path = tmp_path / "long.json"
    path.write_text(json.dumps(rows))
    cut = prepare_data(str(path), tiny.tokenizer, RenderOptions(max_len=256, loss="full"), progress=False)
    assert cut.stats["truncated"] == 1 and max(len(x) for x in cut.input_ids) == 256 and cut.stats["kept"] == 6
    dropped = prepare_data(str(path), tiny.tokenizer, RenderOptions(max_len=256, too_long="drop"), progress=False)
    assert dropped.stats["dropped_too_long"] == 1 and dropped.stats["kept"] == 5
    with pytest.raises(UserError, match="truncating them to --max-len left no reply tokens"):
        prepare_data(str(path), tiny.tokenizer, RenderOptions(max_len=12), progress=False)
