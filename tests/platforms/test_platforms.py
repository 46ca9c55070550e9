"""The adapter interface and the local adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from platforms import LocalPlatform, current_platform, get_platform


def test_local_is_the_fallback_and_reads_its_folders_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("QWEN_KIT_PLATFORM", raising=False)
    monkeypatch.setenv("QWEN_KIT_MODELS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("QWEN_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    p = current_platform()
    assert isinstance(p, LocalPlatform)
    assert p.model_dirs() == [tmp_path / "a", tmp_path / "b", tmp_path / "models"]
    assert p.cache_dir() == tmp_path / "cache"
    assert p.working_dir() == Path.cwd()


def test_a_forced_unknown_platform_names_the_known_ones(monkeypatch):
    monkeypatch.setenv("QWEN_KIT_PLATFORM", "colab")
    with pytest.raises(ValueError, match="known platforms: autodl, kaggle, local"):
        current_platform()
    assert get_platform("local").name == "local"


def test_adapters_import_nothing_from_the_library_and_errors_import_nothing():
    import ast

    from tests.conftest import ROOT

    for path in sorted((ROOT / "platforms").glob("*.py")) + [ROOT / "qwen_kit" / "errors.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.split(".")[0] == "qwen_kit"], path
        if path.name == "errors.py":
            assert [m for m in imported if m != "__future__"] == [], imported


def test_another_package_named_platforms_is_named_not_used(tmp_path):
    import subprocess
    import sys

    fake = tmp_path / "site" / "platforms"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def current_platform():\n    raise SystemExit('wrong platforms used')\n")
    # as after `pip install` of a distribution that also ships a top-level "platforms"
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); from qwen_kit.entry import run_cli; run_cli(lambda: 0)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=tmp_path)
    err = res.stderr.decode()
    assert res.returncode == 2 and "is not qwen_kit's adapters" in err and str(fake) in err, err
