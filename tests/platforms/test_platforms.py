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
