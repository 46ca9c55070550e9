"""make doctor on this machine: the environment report, the self-checks, the JSON for bug reports,
and a temporary folder that is gone when it ends."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from tests.conftest import make_dry_run, run_script


def test_doctor_checks_this_machine_and_writes_its_report(tmp_path):
    report_file = tmp_path / "report.json"
    scratch = tmp_path / "tmp"  # the doctor's models, checkpoints and runs go under TMPDIR
    scratch.mkdir()
    # Importing bitsandbytes makes torch's compile cache folder, shared by every torch program
    # (TMPDIR/torchinductor_USER): not the doctor's to delete, so it is kept apart here.
    env = {"QWEN_KIT_CACHE": str(tmp_path / "cache"), "TMPDIR": str(scratch),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    res = run_script("doctor.py", "--report", str(report_file), env=env, timeout=300)
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
    assert checks["continuous batching"]["status"] == "ok", checks["continuous batching"]
    assert list(scratch.iterdir()) == []  # on a GPU: GBs of models and checkpoints otherwise


def test_the_temporary_folder_is_deleted_when_the_doctor_itself_fails(tmp_path, monkeypatch):
    import qwen_kit.testing
    from qwen_kit import doctor

    def half_built(folder):  # fails after writing, like a full disk would
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(qwen_kit.testing, "build_tiny_qwen", half_built)
    monkeypatch.delenv("QWEN_KIT_CACHE", raising=False)
    with pytest.raises(OSError, match="No space"):
        doctor.run_doctor(tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []
    assert "QWEN_KIT_CACHE" not in os.environ  # not left pointing at the deleted folder


def _broken_when_batched(monkeypatch):
    """Every forward pass over more than one row returns the last row's logits shifted by one
    token: what a wrong cache, mask or position in the batcher would look like."""
    import qwen_kit.model

    real = qwen_kit.model.load_model

    def load(*args, **kwargs):
        loaded = real(*args, **kwargs)

        def corrupt(module, inputs, output):
            if output.logits.shape[0] > 1:
                output.logits[-1] = output.logits[-1].roll(1, dims=-1)
            return output

        loaded.model.register_forward_hook(corrupt)
        return loaded

    monkeypatch.setattr(qwen_kit.model, "load_model", load)


@pytest.mark.parametrize("broken", [False, True], ids=["sound", "broken"])
def test_the_batching_check_fails_when_batched_replies_differ_from_sequential_ones(tiny_qwen_dir, monkeypatch,
                                                                                  broken):
    from qwen_kit.doctor import check_batching

    if broken:
        _broken_when_batched(monkeypatch)
    check = check_batching(tiny_qwen_dir)
    assert check.status == ("failed" if broken else "ok"), check
    assert check.figures["same"] == (3 if broken else 4) and check.figures["requests"] == 4, check


def test_make_doctor_passes_its_arguments():
    assert "scripts/doctor.py --report r.json" in make_dry_run("doctor", "ARGS=--report r.json")
