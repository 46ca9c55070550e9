"""Job configs: defaults < YAML recipe < command-line flags."""

from __future__ import annotations

import argparse

import pytest

from qwen_kit.config import add_dataclass_args, load_config
from qwen_kit.errors import UserError
from qwen_kit.train.config import TrainConfig


def _parse(*argv: str) -> dict:
    p = argparse.ArgumentParser()
    add_dataclass_args(p, TrainConfig)
    return vars(p.parse_args(list(argv)))


def test_flags_override_the_recipe_which_overrides_defaults(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1.0e-4\nper_device_batch: 4\nno_system_prompt: false\n")
    cfg = load_config(TrainConfig, str(recipe), _parse("--per-device-batch", "2", "--no-system-prompt",
                                                       "--lora-targets", "q_proj", "v_proj"))
    assert cfg.learning_rate == 1e-4 and cfg.per_device_batch == 2 and cfg.no_system_prompt is True
    assert cfg.lora_targets == ["q_proj", "v_proj"] and cfg.max_len == TrainConfig().max_len
    assert load_config(TrainConfig, str(recipe), _parse()).no_system_prompt is False
    assert _parse("--no-packing")["packing"] is False and _parse()["packing"] is None


def test_an_unknown_recipe_key_is_named(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("learning_rat: 1.0e-4\n")
    with pytest.raises(UserError, match="unknown option.*learning_rat.* in .*typo.yaml"):
        load_config(TrainConfig, str(recipe), {})
