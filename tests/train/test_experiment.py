"""An experiment sweep runs every variant and leaves a table and plots behind."""

from __future__ import annotations

import csv
import json


from tests.conftest import ROOT, run_script

MCQ = ROOT / "tests" / "eval" / "reference" / "mcq_small.jsonl"


def test_sweep_writes_table_csv_and_plots(tiny_qwen_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": f"Q{i}?", "input": "", "output": f"A{i}."} for i in range(30)]))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"""name: tiny-loss
overrides: {{model: "{tiny_qwen_dir}", data: "{data}", max_steps: 3, eval_share: 0.2, eval_steps: 3,
            max_len: 64, per_device_batch: 2, save_steps: 1000, logging_steps: 1,
            bench: "{MCQ}", bench_steps: 1000, bench_limit: 8}}
variants:
  - {{name: full, loss: full}}
  - {{name: response, loss: response}}
""")
    res = run_script("experiment.py", str(sweep), "--out", str(tmp_path / "exp"), "--learning-rate", "1e-3")
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv", encoding="utf-8")))
    assert [r["variant"] for r in rows] == ["full", "response"]
    assert [r["loss"] for r in rows] == ["full", "response"] and all(r["steps"] == "3" for r in rows)
    assert all(float(r["eval_loss"]) > 0 and float(r["real_tokens_per_s"]) > 0 for r in rows)
    # like with like: the full-loss variant's eval loss counts prompt tokens, so every variant is
    # also scored on reply tokens alone
    full, response = rows
    assert float(response["eval_reply_loss"]) == float(response["eval_loss"])
    assert float(full["eval_reply_loss"]) != float(full["eval_loss"])
    assert all(0 < float(r["padding_efficiency"]) <= 1 for r in rows)
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| full |" in md and "loss_curves.png" in md
    assert "![final eval loss on reply tokens](final_eval_loss.png)" in md  # the bars use the shared metric
    # --bench in the sweep: each variant's final benchmark accuracy is a column and a chart
    assert all(0 <= float(r["bench/mcq_small"]) <= 100 for r in rows) and "benchmarks.png" in md
    for png in ("loss_curves.png", "final_eval_loss.png", "benchmarks.png"):
        assert (tmp_path / "exp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_without_variants_is_refused(tmp_path):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text("name: x\n")
    res = run_script("experiment.py", str(sweep))
    assert res.returncode == 2 and b"needs a non-empty 'variants' list" in res.stderr


def test_the_batch_sweep_gives_every_variant_the_same_rows_and_nearly_the_same_losses(tiny_qwen_dir, tmp_path,
                                                                                       monkeypatch):
    from qwen_kit.train.experiment import run_experiment

    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "varied.json"  # rows of many lengths: length grouping would batch them differently
    data.write_text(json.dumps([{"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i)))}
                                for i in range(1, 41)]), encoding="utf-8")
    root = run_experiment(str(ROOT / "configs" / "exp_batch.yaml"),
                          {"model": str(tiny_qwen_dir), "data": str(data), "max_steps": 2, "eval_steps": 2,
                           "eval_share": 0.2, "max_len": 192, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                           "finetune": "lora", "lora_r": 4}, str(tmp_path / "exp"))
    rows = list(csv.DictReader(open(root / "results.csv", encoding="utf-8")))
    assert [r["variant"] for r in rows] == ["b1x8", "b2x4", "b4x2", "b8x1"]
    histories = [json.loads((root / r["variant"] / "run_summary.json").read_text())["log_history"] for r in rows]
    # the same 8 rows in every optimizer step: the same real tokens, step by step
    real = [[h["tokens/real"] for h in hist if "tokens/real" in h] for hist in histories]
    assert all(r == real[0] for r in real), real
    # so the variants differ only by padding and summation order (LoRA dropout off: it would draw
    # different masks for differently shaped batches)
    for key in ("final_train_loss", "eval_loss", "eval_reply_loss"):
        values = [float(r[key]) for r in rows]
        assert max(values) - min(values) < 1e-4, (key, values)


def test_loss_curves_of_a_short_run_show_whole_steps_every_eval_point_and_a_legend_beside_them():
    from qwen_kit.train.experiment import plot_loss_curves

    def history(loss):  # two logged steps and one eval: what a CPU run of the sweeps logs
        return [{"step": 1, "loss": loss}, {"step": 2, "loss": loss - 0.1}, {"step": 2, "eval_loss": loss - 0.2}]

    fig = plot_loss_curves("batch", {"b1x8": history(2.0), "b2x4": history(2.0), "b8x1": history(2.0)})
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no step 1.2, 1.4, ...
    lines = ax.get_lines()
    evals = [line for line in lines if "eval" in line.get_label()]
    assert len(evals) == 3 and all(list(line.get_xdata()) == [2] for line in evals)
    # variants that train alike draw the same curve: their markers still tell them apart
    assert len({line.get_marker() for line in lines if "train" in line.get_label()}) == 3
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # beside the plot, covering no curve
