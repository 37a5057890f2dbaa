"""The config tree: one dataclass per piece, each piece's own config next to its code (DataConfig in
data.py, RolloutConfig in rollout.py, SchemeConfig in weights.py, LossConfig in loss.py), filled from a
yaml file and overridden on the command line as key.sub=value. Unknown keys and wrong types are errors
that name the key and the file that set it.

A yaml file may start from another: `inherit: base.yaml` (a path relative to the file's own directory)
loads that file first, and so on up the chain; the file's keys then merge into it (mappings key by key,
lists and scalars replace), and the command-line overrides apply last.

    cfg = load_config("configs/daro.yaml", ["scheme.daro.lr=0.05", "loss.eps_high=0.28"])
"""
import dataclasses
import difflib
import importlib.util
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data import REWARDS, DataConfig
from loss import LossConfig, logprob_precision
from rollout import RolloutConfig
from weights import SCHEMES, SchemeConfig


@dataclass
class ModelConfig:
    path: str = "tiny"              # a Hugging Face dir or hub name; "tiny" builds a local random-init model
    dtype: str = "float32"          # trainer parameter dtype: float32 | bfloat16 (GPU: bf16 compute, fp32 reduce)
    gradient_checkpointing: bool = False
    compile: bool = False           # torch.compile each decoder layer (inductor fuses norms, rotary, SiLU,
                                    # residuals); the first micro-batches pay for the compilation
    onednn_linears: bool = True     # CPU, float32: the decoder layers' matmuls by oneDNN, not MKL (policy.py's
                                    # OneDNNLinear: MKL's sgemm is slower at these shapes); not with compile,
                                    # no effect on GPUs


@dataclass
class RewardConfig:
    kind: str = "math"              # "math": verify.score_batch; "first_char": the response starts with the answer
    workers: int = 2                # verify.py process pool (0 = score in this process)
    timeout: float = 5.0            # seconds per response, enforced from outside the worker
    overlong_buffer: int = 0        # DAPO soft overlong punishment: L_cache (0 = off); L_max = rollout.max_tokens
    overlong_filter: bool = False   # DAPO overlong filtering: truncated responses get no loss
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill the batch
    max_num_gen_batches: int = 4    # generation rounds per step before dynamic sampling gives up


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 10
    schedule: str = "constant"      # after warm-up: constant | cosine | linear
    min_lr_ratio: float = 0.0       # floor of cosine/linear decay, as a fraction of lr
    grad_clip: float = 1.0

    def lr_factor(self, total_steps):
        """The learning-rate multiplier as a function of completed steps (for LambdaLR): linear warm-up
        over warmup_steps, then constant, or cosine / linear decay to min_lr_ratio at total_steps."""
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"optim.schedule must be constant, cosine or linear, got {self.schedule!r}")

        def f(step):
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            if self.schedule == "constant":
                return 1.0
            frac = min(1.0, (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps))
            decay = 0.5 * (1 + math.cos(math.pi * frac)) if self.schedule == "cosine" else 1 - frac
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * decay
        return f


@dataclass
class EvalConfig:
    every: int = 0                  # evaluate every N steps (0 = never); also after the last step
    benchmarks: list[str] = field(default_factory=list)  # eval.py names (math500, ...) or "synthetic"
    data_dir: str = "data"          # `make data` (python -m scripts.get_data) writes the benchmarks here
    limit: int = 0                  # problems per benchmark (0 = all)
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 0             # 0 = rollout.max_tokens


@dataclass
class WandbConfig:
    """Weights & Biases tracking, from rank 0 (metrics.py): the merged config once, every metrics.jsonl record
    at its step, a table of sampled answers per evaluation; --resume continues the same W&B run."""
    enabled: bool = False
    project: str = "rlvr"
    entity: str = ""                # "" = the logged-in account's default entity
    name: str = ""                  # run name; "" = the last part of out_dir
    group: str = ""                 # e.g. one group per sweep, its seeds inside it
    tags: list[str] = field(default_factory=list)
    mode: str = ""                  # online | offline | disabled; "" = $WANDB_MODE, else online
    eval_samples: int = 8           # problems per benchmark in each evaluation's table of answers (0 = no table)


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    steps: int = 100
    prompts_per_step: int = 32      # P, across all ranks
    G: int = 8                      # samples per prompt
    ppo_epochs: int = 1
    mini_batches: int = 1           # optimizer steps per epoch (each a slice of whole prompt groups)
    micro_batch_size: int = 64      # rows (one response each, unless packed or shared) per forward/backward, at most
    micro_batch_tokens: int = 0     # > 0: pack length-sorted responses into micro-batches of at most this many
                                    # padded tokens (rows x longest prompt + response); 0: runs of micro_batch_size
    share_prompt: bool = False      # a prompt's forward/backward once for its G responses: a row is the prompt,
                                    # then its responses, under an [S, S] attention mask per row (exact; memory
                                    # S^2 per row, so for short responses such as CPU runs, not 3k-token ones)
    grad_sync: str = "step"         # FSDP: reduce-scatter gradients once per optimiser "step" (holds unsharded
                                    # gradients between micro-batches) or after every "micro_batch"
    skip_zero_advantage: bool = True  # leave A_i = 0 responses out of the training pass (no KL / entropy term)
    save_every: int = 0             # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    tensorboard: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)  # Weights & Biases (WandbConfig)
    diagnostics: bool = False       # per-rank out_dir/diagnostics/rank_R.jsonl: devices, collective backends,
                                    # peak memory per phase, engine-vs-trainer log-prob mismatch (one extra forward),
                                    # the longest micro-batch the config allows (one extra forward + backward),
                                    # checkpoint recomputes, LM-head kernel share of the train time (syncs the
                                    # GPU); gpu_check.py reads it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def sampler_dtype(self):
        """The dtype the sampler runs in: rollout.dtype, or the trainer's where it is "auto" (vLLM's own "auto"
        turns float32 into bfloat16 on CPUs, and the sampler would drift from the trainer)."""
        return self.model.dtype if self.rollout.dtype == "auto" else self.rollout.dtype


class ConfigError(ValueError):
    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key  # the dotted config key at fault, if one is: load_config names the file that set it


def _coerce(value, typ, key):
    """Check `value` (parsed by yaml) against the annotation `typ`; return it, converted where lossless."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}", key)
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(typ):
        return from_dict(typ, value, key)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # yaml reads "1e-6" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r} ({type(value).__name__})",
                          key)
    return value


def from_dict(cls, data, prefix=""):
    """Build the dataclass `cls` from a nested dict, naming any unknown key or wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}' must be a mapping, got {data!r}", prefix or None)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{full}'{hint}", full)
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


INHERIT = "inherit"  # the one key a yaml file may hold that is not a config field


def parse_yaml(text, where):
    """yaml.safe_load, with a syntax error as one line that names `where` (a file, an override)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid yaml: {getattr(e, 'problem', None) or e}{at}") from None


def read_yaml(path, origin, chain=()):
    """The mapping of the yaml file `path` merged over its `inherit:` chain; notes in `origin` which file
    set each dotted key. `chain` holds the files that asked for this one (a cycle is an error)."""
    path = Path(path)
    if not path.is_file():
        asker = f"{chain[-1]}: inherit: " if chain else ""
        raise ConfigError(f"{asker}config file not found: {path}")
    if path.resolve() in [p.resolve() for p in chain]:
        raise ConfigError(f"config inherit cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    data = parse_yaml(path.read_text(), str(path))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, got {data!r}")
    merged = {}
    base = data.pop(INHERIT, None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: '{INHERIT}' names one yaml file (relative to {path.parent}), got {base!r}")
        merged = read_yaml(path.parent / base, origin, (*chain, path))
    merge(merged, data, origin, str(path))
    return merged


def merge(into, top, origin, source, prefix=""):
    """Deep-merge the mapping `top` into `into`: mappings merge key by key, anything else (lists, scalars)
    replaces. `origin[dotted key]` becomes `source` for each key `top` sets (None: the command line)."""
    for key, value in top.items():
        path = f"{prefix}{key}"
        origin[path] = source
        if isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            merge(into[key], value, origin, source, path + ".")
        else:
            into[key] = value


def source_of(key, origin):
    """The file that set `key` (or the section holding it); None for the command line or unknown."""
    key = key.split("[")[0]  # a list element's error belongs to the list
    while key:
        if key in origin:
            return origin[key]
        key = key.rpartition(".")[0]
    return None


def load_config(path=None, overrides=()):
    """TrainConfig from a yaml file (optional, with its `inherit:` chain) and `key.sub=value` overrides
    (values parsed as yaml), applied in that order."""
    origin = {}
    data = {} if path is None else read_yaml(path, origin)
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        value = parse_yaml(raw, f"override {item!r}")
        for part in reversed(key.split(".")):
            value = {part: value}
        merge(data, value, origin, None)
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as e:
        source = source_of(e.key or "", origin)
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}", e.key) from None


def check_config(cfg: TrainConfig):
    for key in ("prompts_per_step", "ppo_epochs", "mini_batches", "micro_batch_size", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(cfg, key)}")
    if cfg.G < 2:
        raise ConfigError(f"config key 'G' must be >= 2 (group statistics), got {cfg.G}")
    if cfg.reward.kind not in REWARDS:
        raise ConfigError(f"config key 'reward.kind' must be one of {', '.join(REWARDS)}, got {cfg.reward.kind!r}")
    if cfg.scheme.name not in SCHEMES:
        raise ConfigError(f"config key 'scheme.name' must be one of {', '.join(SCHEMES)}, got {cfg.scheme.name!r}")
    if cfg.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config key 'model.dtype' must be float32 or bfloat16, got {cfg.model.dtype!r}")
    if cfg.grad_sync not in ("step", "micro_batch"):
        raise ConfigError(f"config key 'grad_sync' must be step or micro_batch, got {cfg.grad_sync!r}")
    if cfg.micro_batch_tokens < 0:
        raise ConfigError(f"config key 'micro_batch_tokens' must be >= 0, got {cfg.micro_batch_tokens}")
    if cfg.loss.reg_weight not in ("token_mean", "scheme"):
        raise ConfigError(f"config key 'loss.reg_weight' must be token_mean or scheme, got {cfg.loss.reg_weight!r}")
    try:
        logprob_precision(cfg.loss)
    except ValueError as e:
        raise ConfigError(f"config key {e}") from None
    if cfg.loss.ratio == "sequence" and SCHEMES[cfg.scheme.name].per_token_weights:
        warnings.warn(f"loss.ratio 'sequence' (GSPO) with scheme '{cfg.scheme.name}': its W_i weighs tokens, so the "
                      "objective is no longer GSPO's per-sequence mean (grpo / drgrpo weights keep it)")
    if cfg.data.level_sampling not in ("rows", "learnability"):
        raise ConfigError("config key 'data.level_sampling' must be rows or learnability, "
                          f"got {cfg.data.level_sampling!r}")
    if not 0 <= cfg.data.level_memory < 1:
        raise ConfigError(f"config key 'data.level_memory' must be in [0, 1), got {cfg.data.level_memory}")
    if cfg.data.max_prompt_tokens < 1:
        raise ConfigError(f"config key 'data.max_prompt_tokens' must be >= 1, got {cfg.data.max_prompt_tokens}")
    if cfg.rollout.tensor_parallel_size != 1:
        raise ConfigError("config key 'rollout.tensor_parallel_size' must be 1: every rank samples its own prompts "
                          "with its own engine, and a tensor-parallel engine would need its ranks to share them")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config key 'tensorboard' is true but the tensorboard package is not installed "
                          "(pip install tensorboard; metrics.jsonl is written either way)")
    if cfg.wandb.enabled and importlib.util.find_spec("wandb") is None:
        raise ConfigError("config key 'wandb.enabled' is true but the wandb package is not installed "
                          "(pip install wandb; metrics.jsonl is written either way)")
    if cfg.wandb.mode not in ("", "online", "offline", "disabled"):
        raise ConfigError("config key 'wandb.mode' must be online, offline, disabled or empty, "
                          f"got {cfg.wandb.mode!r}")
    if cfg.wandb.eval_samples < 0:
        raise ConfigError(f"config key 'wandb.eval_samples' must be >= 0, got {cfg.wandb.eval_samples}")
