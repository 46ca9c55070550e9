"""Fixtures the retrieval tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def docs(tmp_path, request) -> Path:
    """A documents folder holding the test module's ``DOCS`` (file name -> text)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in request.module.DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder
