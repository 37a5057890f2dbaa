"""The config tree: yaml fills it, key.sub=value overrides it, unknown keys and wrong types fail by name."""
from pathlib import Path

import pytest

import config
from config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scheme:\n  name: dapo\n  hadw:\n    enabled: true\nloss:\n  eps_high: 0.28\n")
    cfg = load_config(path, ["loss.eps_low=0.1", "scheme.hadw.lambda_scale=1.3", "loss.dual_clip=3"])
    assert cfg.scheme.name == "dapo" and cfg.scheme.hadw.enabled is True
    assert cfg.loss.eps_high == 0.28 and cfg.loss.eps_low == 0.1
    assert cfg.scheme.hadw.lambda_scale == 1.3
    assert cfg.loss.dual_clip == 3.0 and isinstance(cfg.loss.dual_clip, float)  # int accepted for float
    assert cfg.loss.kl_beta == 0.0  # untouched default
    assert load_config(None, ["loss.kl_beta=1e-3"]).loss.kl_beta == 1e-3  # yaml reads 1e-3 as a string


@pytest.mark.parametrize("override,message", [
    ("scheme.nme=grpo", "unknown config key 'scheme.nme'; did you mean 'name'"),
    ("lose.eps_low=0.1", "unknown config key 'lose'; did you mean 'loss'"),
    ("loss.eps_low=abc", "config key 'loss.eps_low' expects float"),
    ("scheme.hadw.m=2.5", "config key 'scheme.hadw.m' expects int"),
    ("scheme.hadw.enabled=1", "config key 'scheme.hadw.enabled' expects bool"),
    ("scheme=3", "config section 'scheme' must be a mapping"),
    ("loss.eps_low", "not of the form key.sub=value"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_missing_file_and_typo_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  eps_hihg: 0.3\n")
    with pytest.raises(ConfigError, match="unknown config key 'loss.eps_hihg'; did you mean 'eps_high'"):
        load_config(path)


def test_tensorboard_without_the_package_is_a_config_error(monkeypatch):
    cfg = load_config(CONFIGS / "tiny.yaml", ["tensorboard=true"])
    real_find_spec = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name: None if name == "tensorboard" else real_find_spec(name))
    with pytest.raises(ConfigError, match="'tensorboard' is true but the tensorboard package is not installed"):
        config.check_config(cfg)
    config.check_config(load_config(CONFIGS / "tiny.yaml", []))  # off: no package needed
