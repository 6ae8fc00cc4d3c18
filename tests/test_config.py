"""Typed configs: YAML presets, command-line overrides, one-line errors, saving and validation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from fmkit.config import TrainConfig, parse_config, save_config
from fmkit.errors import ConfigError
from fmkit.tasks.mlm import MLMConfig


def preset(tmp_path, values: dict, name: str = "preset.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def parse(argv: list[str], config_cls=TrainConfig, **kwargs):
    return parse_config(config_cls, argv, prog="test", **kwargs)


def config_error(argv: list[str], config_cls=TrainConfig) -> str:
    with pytest.raises(ConfigError) as error:
        parse(argv, config_cls)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_defaults_and_overrides():
    assert parse([]) == TrainConfig()
    config = parse(["--max_steps", "7", "--learning_rate=0.01", "--lr_scheduler", "linear", "--push_to_hub", "true"])
    assert (config.max_steps, config.learning_rate) == (7, 0.01)
    assert config.lr_scheduler == "linear" and config.push_to_hub is True
    assert isinstance(config.max_steps, int) and isinstance(config.learning_rate, float)


@pytest.mark.parametrize("config_cls", [TrainConfig, MLMConfig])
def test_preset_then_flags_later_wins(tmp_path, config_cls):
    path = preset(tmp_path, {"max_steps": 7, "seed": 3, "output_dir": "from-preset"})
    config = parse(["--config", path, "--max_steps", "9"], config_cls)
    assert (config.max_steps, config.seed, config.output_dir) == (9, 3, "from-preset")
    assert isinstance(config, config_cls)
    assert parse(["--max_steps", "9", "--config", path], config_cls).max_steps == 7


def test_default_preset_only_without_config(tmp_path):
    default = preset(tmp_path, {"max_steps": 11, "seed": 5}, "default.yaml")
    chosen = preset(tmp_path, {"max_steps": 22}, "chosen.yaml")
    assert parse(["--seed", "6"], default_preset=default) == dataclasses.replace(TrainConfig(), max_steps=11, seed=6)
    for argv in (["--config", chosen], [f"--config={chosen}"]):
        config = parse(argv, default_preset=default)
        assert (config.max_steps, config.seed) == (22, TrainConfig.seed)


def check_unknown_key_message(message: str, key: str, close: str, config_cls) -> None:
    assert f"'{key}'" in message
    assert f"did you mean {close}" in message
    valid = [f.name for f in dataclasses.fields(config_cls)]
    assert all(name in message for name in valid)


@pytest.mark.parametrize("config_cls", [TrainConfig, MLMConfig])
@pytest.mark.parametrize("argv", [["--learnig_rate", "1e-3"], ["--learnig_rate=1e-3"]])
def test_unknown_flag(config_cls, argv):
    check_unknown_key_message(config_error(argv, config_cls), "learnig_rate", "learning_rate", config_cls)


def test_unknown_key_in_preset(tmp_path):
    path = preset(tmp_path, {"max_steps": 7, "mlm_probabilty": 0.2})
    message = config_error(["--config", path], MLMConfig)
    check_unknown_key_message(message, "mlm_probabilty", "mlm_probability", MLMConfig)


@pytest.mark.parametrize(
    "argv, key", [(["--max_steps", "seven"], "max_steps"), (["--lr_scheduler", "foo"], "lr_scheduler")]
)
def test_wrong_type_or_choice(argv, key):
    message = config_error(argv)
    assert key in message and argv[1] in message


def test_missing_preset_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert missing in config_error(["--config", missing])
    assert missing in config_error([f"--config={missing}"])
    with pytest.raises(ConfigError, match="nope.yaml"):
        parse([], default_preset=missing)


def test_model_config_from_json_flag_and_yaml_mapping(tmp_path):
    overrides = {"hidden_size": 32, "num_hidden_layers": 2}
    assert parse(["--model_config", json.dumps(overrides)], MLMConfig).model_config == overrides
    path = preset(tmp_path, {"model_config": overrides, "mlm_probability": 0.2})
    config = parse(["--config", path], MLMConfig)
    assert config.model_config == overrides and config.mlm_probability == 0.2
    assert MLMConfig().model_config == {}


def test_saved_config_round_trips(tmp_path):
    argv = [
        "--max_steps",
        "3",
        "--learning_rate",
        "2e-4",
        "--lr_scheduler",
        "constant",
        "--train_files",
        '["a", "b"]',
        "--resume_from_checkpoint",
        "latest",
        "--model_config",
        '{"hidden_size": 64}',
        "--whole_word_masking",
        "true",
        "--mlm_probability",
        "0.3",
        "--hub_model_id",
        "me/model",
    ]
    config = parse(argv, MLMConfig)
    assert config != MLMConfig()
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert yaml.safe_load(path.read_text())["model_config"] == {"hidden_size": 64}
    assert parse(["--config", str(path)], MLMConfig) == config


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"per_device_batch_size": -1}, "per_device_batch_size"),
        ({"eval_every": -1}, "eval_every"),
        ({"save_every": -5}, "save_every"),
        ({"push_to_hub": True}, "hub_model_id"),
        ({"learning_rate": -1.0}, r"learning_rate -1.0: expected a value >= 0$"),
        ({"adam_beta1": 1.5}, r"adam_beta1 1.5: expected a value in \[0, 1\)$"),
        ({"adam_beta2": 1.0}, r"adam_beta2 1.0: expected a value in \[0, 1\)$"),
        ({"adam_epsilon": 0.0}, r"adam_epsilon 0.0: expected a value > 0$"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),  # negative used to turn clipping off silently
    ],
)
def test_validate_rejects(changes, key):
    with pytest.raises(ConfigError, match=key):
        dataclasses.replace(TrainConfig(), **changes).validate()


def test_validate_accepts_sensible_settings():
    TrainConfig().validate()
    TrainConfig(eval_every=0, save_every=0, push_to_hub=True, hub_model_id="me/model").validate()
