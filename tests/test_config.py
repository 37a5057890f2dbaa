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


GPU_CONFIGS = ["grpo", "drgrpo", "dapo", "lipo", "gspo", "daro", "grpo_hadw", "gspo_hadw", "dapo_hadw", "qwen05_gsm8k"]
# benchmarks/bench_memory.py's figures (measured on the CPU, bf16 with gradient checkpointing; docs/GPU.md): KiB per
# token per layer (checkpointed input), outside the layers, the backward's working set; the LM-head kernel's
# backward peak in bytes; the row width they were measured at
MEASURED = {"Qwen/Qwen2.5-Math-1.5B": dict(layer=3.00, outside=16.50, backward=143.05, kernel=2.605e9, width=4096),
            "Qwen/Qwen2.5-0.5B-Instruct": dict(layer=1.75, outside=8.75, backward=77.56, kernel=1.632e9, width=1536)}


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_configs_micro_batch_tokens_leave_headroom(name):
    """docs/GPU.md's formula: the update's peak per GPU, fixed(N) + per-token activations x micro_batch_tokens,
    stays under 85% of an 80 GB card at 1 and at 8 GPUs; and micro_batch_size rows of the widest sequence the
    config allows can fill micro_batch_tokens (else the row cap, not the token budget, sets the micro-batch)."""
    import sys
    sys.path.insert(0, str(CONFIGS.parent / "benchmarks"))
    import bench_memory
    cfg = load_config(CONFIGS / f"{name}.yaml")
    m = MEASURED[cfg.model.path]
    width = cfg.data.max_prompt_tokens + cfg.rollout.max_tokens
    assert width == m["width"] and cfg.model.gradient_checkpointing and cfg.model.dtype == "bfloat16"
    assert cfg.micro_batch_size * width >= cfg.micro_batch_tokens
    shape = bench_memory.SHAPES["qwen2.5-1.5b" if "1.5B" in cfg.model.path else "qwen2.5-0.5b"]
    counts = bench_memory.parameter_counts(shape)
    act = {k: m[k] * 1024 for k in ("layer", "outside", "backward")}
    for n_gpus in (1, 8):
        b = bench_memory.budget(counts, shape["num_hidden_layers"], act, {"backward_peak": m["kernel"]}, n_gpus,
                                kl_reference=cfg.loss.kl_beta > 0)
        assert b.peak(cfg.micro_batch_tokens) <= 0.85 * 80e9, (n_gpus, b.peak(cfg.micro_batch_tokens) / 1e9)
