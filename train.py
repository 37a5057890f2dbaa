"""RLVR training loop (work in progress: the loop lands with its issue)."""
import dataclasses
import difflib
import string
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from loss import LossConfig
from weights import SchemeConfig


# ---------------------------------------------------------------------------------------------
# Config: one dataclass tree (each piece's config lives next to its code), filled from yaml and
# overridden on the command line as key.sub=value. Unknown keys and wrong types are errors.

@dataclass
class TrainConfig:
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    loss: LossConfig = field(default_factory=LossConfig)


class ConfigError(ValueError):
    pass


def _coerce(value, typ, key):
    """Check `value` (parsed by yaml) against the annotation `typ`; return it, converted where lossless."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
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
        raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls, data, prefix=""):
    """Build the dataclass `cls` from a nested dict, naming any unknown key or wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def load_config(path=None, overrides=()):
    """TrainConfig from a yaml file (optional) and `key.sub=value` overrides (values parsed as yaml)."""
    data = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a config section")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(TrainConfig, data)


def build_tiny_model(out_dir, *, seed=0, hidden=128, layers=2, heads=2, head_dim=64, max_positions=512):
    """Create a random-init Qwen2 model and a character-level tokenizer in `out_dir` (no hub needed).

    Every printable ASCII character is one token, so any math text round-trips; vLLM and transformers
    both load the result. head_dim 64 because vLLM's CPU attention needs head_dim >= 32.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    specials = ["<pad>", "<eos>", "<unk>"]
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(out_dir)

    config = Qwen2Config(
        vocab_size=128,  # padded above the 102 real tokens, as Qwen pads its embedding matrix
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    return out_dir
