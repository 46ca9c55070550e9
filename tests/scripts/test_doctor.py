"""make doctor on this machine: the environment report, the self-checks, the JSON for bug reports."""

from __future__ import annotations

import json

from tests.conftest import make_dry_run, run_script


def test_doctor_checks_this_machine_and_writes_its_report(tmp_path):
    report_file = tmp_path / "report.json"
    res = run_script("doctor.py", "--report", str(report_file), env={"QWEN_KIT_CACHE": str(tmp_path / "cache")},
                     timeout=300)
    out = res.stdout.decode()
    assert res.returncode == 0, out[-2000:] + res.stderr.decode()[-2000:]
    report = json.loads(report_file.read_text())
    env = report["environment"]
    assert env["packages"]["torch"] and env["packages"]["transformers"] and "bitsandbytes" in env["packages"]
    assert env["platform"]["name"] and isinstance(env["gpus"], list)
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("dtype and attention", "attention kernels", "4-bit load and generate", "fp16 start-up check",
                 "training throughput", "2-process DDP"):
        assert name in checks, name
        assert checks[name]["status"] in ("ok", "skipped"), checks[name]
    if not env["gpus"]:  # on a CPU: what needs a GPU says so instead of passing
        assert checks["fp16 start-up check"]["status"] == "skipped" and checks["2-process DDP"]["status"] == "skipped"
    attention = checks["attention kernels"]["figures"]
    assert set(attention["losses"]) >= {"sdpa", "eager"} and attention["packed_vs_padded"] < 1e-4
    throughput = checks["training throughput"]["figures"]
    assert throughput["real_tokens_per_s"] > 0 and 0.5 < throughput["padding_efficiency"] <= 1
    assert report["seconds"] < 120 and "checks, 0 failed" in out


def test_make_doctor_passes_its_arguments():
    assert "scripts/doctor.py --report r.json" in make_dry_run("doctor", "ARGS=--report r.json")
