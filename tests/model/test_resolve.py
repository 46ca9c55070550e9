"""Where a --model value is looked for, and what the user hears when it is not found."""

from __future__ import annotations

import json
import shutil

import pytest

from platforms import LocalPlatform
from qwen_kit.errors import UserError
from qwen_kit.model.resolve import resolve_model


def test_a_local_folder_resolves_to_itself(tiny_qwen_dir):
    ref = resolve_model(str(tiny_qwen_dir))
    assert ref.path == tiny_qwen_dir.resolve() and ref.source == "folder"


def test_a_name_is_found_case_insensitively_in_the_platform_model_folders(tiny_qwen_dir, tmp_path, monkeypatch):
    models = tmp_path / "models"
    shutil.copytree(tiny_qwen_dir, models / "Tiny-Qwen2.5-Instruct")
    monkeypatch.setenv("QWEN_KIT_MODELS", str(models))
    ref = resolve_model("tiny-qwen2.5-instruct", LocalPlatform())
    assert ref.path == (models / "Tiny-Qwen2.5-Instruct").resolve() and ref.source == "platform"
    # a hub-style id finds the folder by its last component too
    assert resolve_model("Qwen/Tiny-Qwen2.5-Instruct", LocalPlatform()).source == "platform"


def test_an_adapter_folder_resolves_to_its_base_model(tiny_qwen_dir, tmp_path):
    adapter = tmp_path / "my-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_qwen_dir)}))
    ref = resolve_model(str(adapter))
    assert ref.path == tiny_qwen_dir.resolve() and ref.adapter == adapter.resolve()


def test_a_missing_folder_names_the_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_a_folder_without_config_json_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path / "weights"))


def test_an_unknown_hub_id_offline_lists_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_KIT_MODELS", str(tmp_path / "mymodels"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        resolve_model("Qwen/Qwen2.5-7B-Nonexistent", LocalPlatform())
    msg = str(err.value)
    assert str(tmp_path / "mymodels" / "Qwen2.5-7B-Nonexistent") in msg
    assert "Hugging Face cache" in msg and "offline mode is on" in msg and "--model demo" in msg


@pytest.mark.slow
def test_demo_resolves_to_a_cached_safetensors_folder():
    ref = resolve_model("demo")
    assert (ref.path / "model.safetensors").is_file() and (ref.path / "config.json").is_file()
    assert resolve_model("demo").path == ref.path  # the second call reuses the conversion
