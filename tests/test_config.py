"""The config tree: yaml fills it (over its `inherit:` chain), key.sub=value overrides it, unknown keys and
wrong types fail naming the key and the file; the files in configs/ say what defines each method."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def test_the_sampler_runs_in_the_trainers_dtype_unless_told_otherwise():
    # vLLM's own "auto" would sample a float32 trainer's policy in bfloat16 on a CPU
    assert load_config(None, ["model.dtype=float32", "rollout.dtype=auto"]).sampler_dtype == "float32"
    assert load_config(None, ["model.dtype=float32", "rollout.dtype=bfloat16"]).sampler_dtype == "bfloat16"


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
    cfg = load_config(CONFIGS / "experiments/tiny.yaml", ["tensorboard=true"])
    real_find_spec = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name: None if name == "tensorboard" else real_find_spec(name))
    with pytest.raises(ConfigError, match="'tensorboard' is true but the tensorboard package is not installed"):
        config.check_config(cfg)
    config.check_config(load_config(CONFIGS / "experiments/tiny.yaml", []))  # off: no package needed


def test_gspo_warning_follows_the_schemes_per_token_weights(monkeypatch):
    """GSPO's sequence ratio warns with a scheme whose W weighs tokens, read from the scheme class: a new
    per-token scheme registered in weights.SCHEMES warns without check_config naming it."""
    import warnings
    import weights

    class TokenMean(weights.GRPO):
        per_token_weights = True

    monkeypatch.setitem(weights.SCHEMES, "token_mean", TokenMean)

    def warns(name, ratio="sequence"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config.check_config(load_config(None, [f"scheme.name={name}", f"loss.ratio={ratio}"]))
        return [str(w.message) for w in caught if "GSPO" in str(w.message)]

    assert warns("token_mean") and warns("dapo") and warns("daro")
    assert not warns("grpo") and not warns("blind_hard") and not warns("token_mean", ratio="token")


def test_a_schemes_own_knob_sits_under_its_name():
    """blind_hard's handicap is scheme.blind_hard.mu; the shared SchemeConfig has no blind_mu any more."""
    assert load_config(None, ["scheme.blind_hard.mu=0.125"]).scheme.blind_hard.mu == 0.125
    with pytest.raises(ConfigError, match="scheme.blind_mu"):
        load_config(None, ["scheme.blind_mu=0.125"])


# ---- inherit: a base file loaded first, then the file's own keys, then the command line

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_inherit_chain_merges_deep_and_replaces_lists(tmp_path):
    # paths are relative to the including file's directory (the tests run from the repo root)
    write(tmp_path / "a.yaml", "steps: 7\nG: 4\nloss:\n  eps_low: 0.1\n  eps_high: 0.3\n"
                               "eval:\n  benchmarks: [math500, aime24]\n  every: 5\n")
    write(tmp_path / "sub" / "b.yaml", "inherit: ../a.yaml\nloss:\n  eps_high: 0.28\nscheme:\n  name: dapo\n")
    c = write(tmp_path / "c.yaml", "inherit: sub/b.yaml\nsteps: 9\neval:\n  benchmarks: [amc23]\n")
    cfg = load_config(c)
    assert cfg.steps == 9 and cfg.G == 4                        # scalar replaced; untouched key from a.yaml
    assert cfg.loss.eps_low == 0.1 and cfg.loss.eps_high == 0.28  # mapping merged key by key over the chain
    assert cfg.scheme.name == "dapo"
    assert cfg.eval.benchmarks == ["amc23"] and cfg.eval.every == 5  # the list replaced, not appended to
    cfg = load_config(c, ["loss.eps_high=0.5", "eval.benchmarks=[minerva]", "steps=11"])  # overrides last
    assert (cfg.loss.eps_high, cfg.loss.eps_low, cfg.eval.benchmarks, cfg.steps) == (0.5, 0.1, ["minerva"], 11)


def config_error(path, overrides=()):
    """The message of the ConfigError that loading `path` raises: one line."""
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_inherit_cycle_and_missing_base_are_one_line_errors(tmp_path):
    a = write(tmp_path / "a.yaml", "inherit: b.yaml\nsteps: 1\n")
    b = write(tmp_path / "b.yaml", "inherit: a.yaml\n")
    assert config_error(a) == f"config inherit cycle: {a} -> {b} -> {a}"
    me = write(tmp_path / "me.yaml", "inherit: me.yaml\n")
    assert config_error(me) == f"config inherit cycle: {me} -> {me}"
    child = write(tmp_path / "child.yaml", "inherit: nope.yaml\n")
    assert config_error(child) == f"{child}: inherit: config file not found: {tmp_path / 'nope.yaml'}"
    bad = write(tmp_path / "bad.yaml", "inherit: [a.yaml, b.yaml]\n")
    assert config_error(bad).startswith(f"{bad}: 'inherit' names one yaml file")


def test_errors_name_the_file_that_set_the_key(tmp_path):
    base = write(tmp_path / "base.yaml", "scheme:\n  daro:\n    lrr: 0.1\n")
    child = write(tmp_path / "child.yaml", "inherit: base.yaml\nloss:\n  eps_high: 0.3\n")
    # the base's typo, found while loading the child
    assert config_error(child) == f"{base}: unknown config key 'scheme.daro.lrr'; did you mean 'lr'?"
    write(base, "steps: 5\n")
    write(child, "inherit: base.yaml\nloss:\n  eps_hihg: 0.3\n")
    assert config_error(child) == f"{child}: unknown config key 'loss.eps_hihg'; did you mean 'eps_high'?"
    write(base, "steps: many\n")
    write(child, "inherit: base.yaml\nG: 4\n")
    assert config_error(child) == f"{base}: config key 'steps' expects int, got 'many' (str)"
    assert load_config(child, ["steps=3"]).steps == 3  # the command line replaces the bad value
    write(base, "eval:\n  benchmarks: [math500, 3]\n")
    write(child, "inherit: base.yaml\neval:\n  every: 5\n")  # eval set by both files, the list by the base
    assert config_error(child) == f"{base}: config key 'eval.benchmarks[1]' expects str, got 3 (int)"
    # a key from the command line: no file to name
    assert config_error(child, ["eval.benchmarks=[math500]", "loss.eps_lo=0.3"]) == \
        "unknown config key 'loss.eps_lo'; did you mean 'eps_low'?"


def test_a_yaml_syntax_error_is_one_line_naming_the_file(tmp_path):
    path = write(tmp_path / "c.yaml", "loss:\n  eps_low: [0.1\n")
    assert config_error(path).startswith(f"{path}: not valid yaml: ") and "line 3" in config_error(path)
    assert config_error(None, ["loss.eps_low=["]).startswith("override 'loss.eps_low=[': not valid yaml: ")


# ---- the files in configs/

def get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


# What defines each GPU method (SPEC.md, the papers), written out by hand: the merged configs must say so.
METHOD_KEYS = ("scheme.name", "loss.ratio", "loss.eps_low", "loss.eps_high", "reward.dynamic_sampling",
               "reward.overlong_buffer", "scheme.hadw.enabled")
METHODS = {
    "grpo":      ("grpo",   "token",    0.2,    0.2,    False, 0,   False),
    "drgrpo":    ("drgrpo", "token",    0.2,    0.2,    False, 0,   False),
    "dapo":      ("dapo",   "token",    0.2,    0.28,   True,  512, False),
    "lipo":      ("lipo",   "token",    0.2,    0.2,    False, 0,   False),
    "gspo":      ("grpo",   "sequence", 0.0003, 0.0004, False, 0,   False),
    "daro":      ("daro",   "token",    0.2,    0.28,   False, 0,   False),
    "grpo_hadw": ("grpo",   "token",    0.2,    0.2,    False, 0,   True),
    "gspo_hadw": ("grpo",   "sequence", 0.0003, 0.0004, False, 0,   True),
    "dapo_hadw": ("dapo",   "token",    0.2,    0.28,   True,  512, True),
}
# the reference settings every method shares (SPEC.md, "Reference hyperparameters")
SHARED = {"model.path": "Qwen/Qwen2.5-Math-1.5B", "data.train": "data/math_train.jsonl", "G": 8,
          "prompts_per_step": 256, "mini_batches": 16, "optim.lr": 1e-6, "optim.weight_decay": 0.1,
          "optim.warmup_steps": 10, "optim.grad_clip": 1.0, "loss.kl_beta": 0.0, "rollout.max_tokens": 3072,
          "rollout.template": "qwen_math", "scheme.hadw.k": 10, "scheme.hadw.lambda_scale": 1.5}


def inherits_base(path):
    """Whether the yaml at `path` reaches configs/base.yaml through its `inherit:` chain."""
    for _ in range(10):
        parent = (yaml.safe_load(path.read_text()) or {}).get("inherit")
        if parent is None:
            return False
        path = path.parent / parent
        if path.resolve() == (CONFIGS / "base.yaml").resolve():
            return True
    raise AssertionError(f"{path}: inherit chain longer than 10")


def test_every_config_file_loads_and_checks():
    paths = sorted(CONFIGS.glob("**/*.yaml"))  # configs/7b/ too
    assert len(paths) >= 22
    for path in paths:
        config.check_config(load_config(path))


@pytest.mark.parametrize("name", list(METHODS))
def test_method_configs_say_what_defines_the_method(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert {key: get(cfg, key) for key in METHOD_KEYS} == dict(zip(METHOD_KEYS, METHODS[name]))
    assert {key: get(cfg, key) for key in SHARED} == SHARED
    assert cfg.out_dir == f"runs/{name}"


def test_method_configs_hold_only_what_differs():
    methods = {p.stem for p in CONFIGS.glob("*.yaml") if inherits_base(p)}
    assert methods == set(METHODS), "a config that inherits base.yaml is a method: add it to METHODS"
    for name in methods:
        lines = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) <= 15, f"configs/{name}.yaml: {len(lines)} lines that are not comments"


# configs/gspo_hadw_official.yaml against the official GSPO + HA-DW script (HA-DW repo, run_hadw.sh) and the verl
# defaults it leaves in place, written out by hand from them
OFFICIAL = {"model.path": "Qwen/Qwen3-4B-Base", "data.max_prompt_tokens": 2048, "rollout.max_tokens": 4096,
            "rollout.max_model_len": 6144, "steps": 200, "prompts_per_step": 256, "G": 8, "mini_batches": 16,
            "ppo_epochs": 1, "optim.lr": 1e-6, "optim.weight_decay": 0.01, "optim.warmup_steps": 0,
            "optim.schedule": "constant", "optim.grad_clip": 1.0, "loss.ratio": "sequence", "loss.eps_low": 0.2,
            "loss.eps_high": 0.2, "loss.dual_clip": None, "loss.kl_beta": 0.0, "loss.entropy_coef": 0.0,
            "scheme.name": "grpo", "scheme.std": "unbiased", "scheme.hadw.enabled": True,
            "scheme.hadw.anchor": "moving_average", "scheme.hadw.k": 10, "scheme.hadw.lambda_scale": 1.5,
            "scheme.hadw.signal": "reward", "reward.overlong_buffer": 0, "reward.dynamic_sampling": False,
            "eval.n": 16, "eval.benchmarks": ["aime24", "aime25", "amc23"]}


def test_official_hadw_mirror_and_the_headers_that_point_at_it():
    cfg = load_config(CONFIGS / "gspo_hadw_official.yaml")
    assert {key: get(cfg, key) for key in OFFICIAL} == OFFICIAL
    assert not inherits_base(CONFIGS / "gspo_hadw_official.yaml")  # stands alone: every value named in the file
    for name in ("grpo_hadw", "gspo_hadw", "dapo_hadw"):
        header = "".join(line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines(keepends=True)
                         if line.startswith("#"))
        assert "gspo_hadw_official.yaml" in header, name
        assert load_config(CONFIGS / f"{name}.yaml").scheme.hadw.signal == "reward"


def test_print_config_shows_the_merged_config():
    root = CONFIGS.parent
    args = ["--config", "configs/gspo_hadw.yaml", "--print-config", "loss.eps_high=0.0005"]
    run = subprocess.run([sys.executable, "train.py", *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = yaml.safe_load(run.stdout)
    expected = load_config(CONFIGS / "gspo_hadw.yaml", ["loss.eps_high=0.0005"])
    assert printed == dataclasses.asdict(expected)
    assert printed["loss"]["ratio"] == "sequence" and printed["scheme"]["hadw"]["enabled"] is True
    assert printed["loss"]["eps_high"] == 0.0005 and printed["model"]["path"] == "Qwen/Qwen2.5-Math-1.5B"
    assert config.from_dict(config.TrainConfig, printed) == expected  # the printed yaml is a config itself


# The memory of every GPU config (its plan at its declared world size): tests/test_memory.py.
