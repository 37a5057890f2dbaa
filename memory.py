"""The memory plan: the peak per GPU of each phase of a training step, term by term, from the run config, the
model's config.json (no weights) and the world size N.

    python train.py --config configs/7b/daro.yaml --memory-plan --world-size 8 [--model-config DIR]

Phases, as train.py runs them: rollout (the vLLM engine awake at rollout.gpu_memory_utilization beside the
trainer's sharded state), update (the engine asleep; micro-batches forward and backward under FSDP2, then AdamW),
sync (the engine wakes its weights, takes the trainer's gathered parameters, then its KV cache).

Where each term comes from:
- arithmetic on the parameter counts (ModelShape, counted from config.json's shapes: tied or untied head, biases,
  q/k norms) and on what FSDP2 (torch 2.13) holds: float32 master weights, AdamW m and v, float32 gradients sharded
  over N; under grad_sync "step" every rank also accumulates unsharded float32 gradients between micro-batches;
  the root (embedding, LM head) stays gathered in the compute dtype through forward and backward, each decoder
  layer is gathered for its forward and backward with the next one prefetched, and a layer's gradient is cast to
  float32 into a reduce-scatter buffer;
- measured: the activations of a micro-batch (what autograd and the checkpoints keep, the backward's working
  set, the LM-head kernel's buffers), by running the model's own transformers layers and loss.token_logprobs under
  torch's FakeTensorMode at the config's real shapes: every op of the CPU path runs and allocates its outputs
  as tensors without data, so the bytes are the CPU run's bytes (tests/test_memory.py checks them equal to a real
  run) at no compute cost. 1 and 2 layers give the L-layer stack (identical layers), 1 and 2 rows the R-row
  micro-batch, one and two chunks the kernel at any token count (integer byte counts, combined in float64).
  The CPU's kernels stand in for CUDA's (its flash attention for CUDA's memory-efficient one);
- assumptions (the named constants below), for the first GPU run to replace: benchmarks/gpu_check.py
  --real-shape prints each phase's plan beside what torch.cuda measured, and fails beyond +10%.
"""
import contextlib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch._subclasses.fake_tensor import FakeTensorMode  # torch 2.13 (pinned); tests/test_memory.py checks it
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GB = 1e9
HEADROOM = 0.15        # the plan must leave this share of the card free
CARD_BYTES = 80e9      # an "80 GB" card in decimal GB (an H100 80GB reports 85.0e9 bytes: this errs low)

# Assumptions, not measured anywhere yet: the first GPU run replaces them (gpu_check.py --real-shape).
ENGINE_ASLEEP = 2e9    # vLLM at sleep level 2 frees its weights and KV cache; its CUDA graphs' pool stays
ENGINE_WORKSPACE = 3e9  # inside the engine's budget beside weights and KV cache: its profiled activation peak and
                        # CUDA graphs (vLLM 0.32 counts both in gpu_memory_utilization)
CUDA_CONTEXT = 1e9     # CUDA context, cuBLAS and NCCL kernels' workspaces: outside torch's allocator
NCCL_BUFFERS = 1e9     # the communicators' buffers of a group of more than one rank
FRAGMENTATION = 0.05   # the caching allocator's reserved but unusable share of the trainer's allocations

PLAN_BYTES_PER_TOKEN = 64  # the step's micro-batch plan on the device: int64 ids, positions and indices, float32
                           # masks and log-probs (policy.make_micro), per token of the rank's whole batch
MODEL_TYPES = ("qwen2", "qwen3", "llama")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PlanError(ValueError):
    """A model config the plan cannot read, or a run it refuses (check): one line."""


def read_model_config(path):
    """The model's config.json as a dict: `path` is a directory holding config.json (nothing else is needed),
    the file itself, or a hub name (transformers.AutoConfig fetches config.json alone)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        return json.loads(p.read_text())
    if Path(path).exists():
        raise PlanError(f"{path} holds no config.json")
    try:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(str(path)).to_dict()
    except (OSError, ValueError):
        raise PlanError(f"model {str(path)!r} is no local directory with a config.json and the hub gave none: pass "
                        "--model-config DIR, a directory holding the model's config.json") from None


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder-only model's config.json."""
    model_type: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    tied: bool          # tie_word_embeddings: the LM head is the embedding matrix
    qkv_bias: bool      # Qwen2 always; Llama and Qwen3 when attention_bias
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool       # Qwen3: an RMSNorm over each head's q and k
    max_positions: int

    @classmethod
    def from_config(cls, c):
        t = c.get("model_type")
        if t not in MODEL_TYPES:
            raise PlanError(f"model_type {t!r}: the plan knows the layers of {', '.join(MODEL_TYPES)} models")
        try:
            H, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            attn_bias = bool(c.get("attention_bias", False))
            return cls(model_type=t, hidden=H, intermediate=int(c["intermediate_size"]), heads=heads,
                       kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or H // heads), layers=int(c["num_hidden_layers"]),
                       vocab=int(c["vocab_size"]),
                       tied=bool(c.get("tie_word_embeddings", False)),  # transformers' default for all three
                       qkv_bias=t == "qwen2" or attn_bias, o_bias=t != "qwen2" and attn_bias,
                       mlp_bias=t == "llama" and bool(c.get("mlp_bias", False)), qk_norm=t == "qwen3",
                       max_positions=int(c.get("max_position_embeddings") or 0))
        except KeyError as e:
            raise PlanError(f"the model's config.json has no {e.args[0]!r}") from None

    def describe(self):
        return (f"{self.model_type}, hidden {self.hidden}, intermediate {self.intermediate}, {self.heads} heads of "
                f"{self.head_dim} / {self.kv_heads} KV, {self.layers} layers, V {self.vocab}, "
                f"{'tied' if self.tied else 'untied'} head")

    def layer_params(self):
        H, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = H * q + 2 * H * kv + q * H + (q + 2 * kv) * self.qkv_bias + H * self.o_bias
        mlp = 3 * H * self.intermediate + (2 * self.intermediate + H) * self.mlp_bias
        return attn + mlp + 2 * H + 2 * self.head_dim * self.qk_norm  # two RMSNorms (+ q and k norms)

    def root_params(self):
        """Outside the decoder layers: the embedding, the final norm, and the LM head when untied."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self):
        return self.layers * self.layer_params() + self.root_params()

    def largest_param(self):
        """Elements of the largest single parameter (the embedding, or an MLP matrix)."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)

    def kv_bytes_per_token(self, dtype_bytes):
        """The engine's KV cache per token: K and V of every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# ---------------------------------------------------------------------------------------------
# Activations, measured under FakeTensorMode.

@dataclass(frozen=True)
class Activations:
    """Activation bytes of a micro-batch of R packed rows of `width` tokens through the whole model, as a + R x b
    per moment of its backward (measure_activations): `kernel` while the LM-head kernel's backward runs (every
    saved tensor alive, plus its buffers), `layers` while the decoder layers' backward runs (the kernel done),
    `embedding` while the embedding's backward runs (the layers done; its weight's gradient is made)."""
    width: int
    kernel: tuple
    layers: tuple
    embedding: tuple

    def at(self, moment, rows):
        a, b = getattr(self, moment)
        return a + rows * b


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages ops returned under this mode that are still alive, and the largest such sum seen
    after any op (`peak`, from reset_peak). Storages of `existing` tensors (parameters, inputs) are not counted:
    ops return views of them, which allocate nothing."""

    def __init__(self, existing=()):
        super().__init__()
        self.refs, self.peak = {}, 0
        self.existing = [StorageWeakRef(t.untyped_storage()) for t in existing]  # held: their addresses stay theirs
        self.skip = {ref.cdata for ref in self.existing}

    def live(self):
        self.refs = {k: (ref, n) for k, (ref, n) in self.refs.items() if not ref.expired()}
        return sum(n for _, n in self.refs.values())

    def reset_peak(self):
        self.peak = self.live()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata in self.skip:
                    continue
                if ref.cdata not in self.refs or self.refs[ref.cdata][0].expired():
                    self.refs[ref.cdata] = (ref, storage.nbytes())
        self.peak = max(self.peak, self.live())
        return out


@dataclass(frozen=True)
class StackBytes:
    """Forward + backward of a decoder stack (stack_pass), bytes: alive when the forward returns, and the most alive
    while the decoder layers' backward runs and while the embedding's runs."""
    held: int
    layers_peak: int
    embedding_peak: int


@dataclass(frozen=True)
class KernelBytes:
    """Forward + backward of the LM-head kernel (kernel_pass), bytes: alive when its forward returns, and the most
    alive during its backward."""
    held: int
    peak: int


def _model_config(config_json, layers, width):
    from transformers import AutoConfig
    fields = {k: v for k, v in config_json.items()
              if k not in ("architectures", "auto_map", "quantization_config", "layer_types", "torch_dtype", "dtype")}
    fields.update(num_hidden_layers=layers, use_cache=False,
                  max_position_embeddings=max(width, fields.get("max_position_embeddings") or 0))
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    cfg._attn_implementation = "sdpa"
    return cfg


def stack_pass(config_json, layers, rows, width, dtype, checkpointing, real=False):
    """Forward + backward of the model's embedding and decoder layers, cut to `layers` layers, on `rows` packed rows
    of `width` tokens (two sequences each, position ids restarting: transformers then builds the packed rows' [S, S]
    attention mask), in train mode, in `dtype` (FSDP2's compute dtype). The backward starts from a gradient of the
    stack's whole output, as the LM-head gather's backward makes it. Weight gradients are dropped as they arrive
    (FSDP2 takes them per layer; the plan counts them per parameter). Under FakeTensorMode (no data, no compute),
    or with data when real=True (tests/test_memory.py compares the two)."""
    from transformers import AutoModel
    cfg = _model_config(config_json, layers, width)
    with contextlib.nullcontext() if real else FakeTensorMode():
        torch.manual_seed(0)
        model = AutoModel.from_config(cfg, dtype=getattr(torch, dtype))
        model.train()  # transformers' layers checkpoint only in train mode
        if checkpointing:
            model.gradient_checkpointing_enable()
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        half = width // 2
        ids = torch.randint(0, cfg.vocab_size, (rows, width))
        positions = torch.cat([torch.arange(half), torch.arange(width - half)]).repeat(rows, 1)
        live = LiveBytes([*model.parameters(), *model.buffers(), ids, positions])
        peaks = {}

        def embedding_backward_begins(grad):  # the gradient reached the embedding's output: the layers are done
            peaks["layers"] = live.peak
            live.reset_peak()

        def watch(module, args, out):
            out.register_hook(embedding_backward_begins)
        model.embed_tokens.register_forward_hook(watch)
        with live:
            hidden = model(input_ids=ids, position_ids=positions).last_hidden_state
            held = live.live()
            grad = torch.ones_like(hidden)
            hidden.backward(grad)
            return StackBytes(held, peaks["layers"], live.peak)


def kernel_pass(vocab, hidden_size, tokens, dtype, real=False):
    """Policy.forward's tail: `tokens` hidden states gathered from the stack's output, then loss.token_logprobs
    against a [vocab, hidden] head, forward + backward, log-prob and entropy both in the loss, in `dtype` in and
    float32 inside (its chunk: loss.py's default)."""
    from loss import _CHUNK_ELEMENTS, _ChunkedTokenLogprobs
    with contextlib.nullcontext() if real else FakeTensorMode():
        torch.manual_seed(0)
        states = torch.randn(tokens, hidden_size, dtype=getattr(torch, dtype), requires_grad=True)
        head = torch.randn(vocab, hidden_size, dtype=getattr(torch, dtype), requires_grad=True)
        head.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))  # the root's: counted apart
        index, targets = torch.arange(tokens), torch.randint(0, vocab, (tokens,))
        live = LiveBytes([states, head, index, targets])
        with live:
            # loss.token_logprobs's autograd function itself: its input checks read the data (no fake tensor can)
            logp, ent = _ChunkedTokenLogprobs.apply(states[index], head, targets, 1.0, vocab,
                                                    max(1, _CHUNK_ELEMENTS // vocab), -100, "highest")
            loss = (logp + ent).sum()
            held = live.live()
            live.reset_peak()
            loss.backward()
            return KernelBytes(held, live.peak)


@functools.lru_cache(maxsize=64)
def _stack_cached(config_key, layers, rows, width, dtype, checkpointing):
    return stack_pass(json.loads(config_key), layers, rows, width, dtype, checkpointing)


@functools.lru_cache(maxsize=64)
def _kernel_cached(vocab, hidden_size, tokens, dtype):
    return kernel_pass(vocab, hidden_size, tokens, dtype)


def measure_activations(config_json, width, dtype, checkpointing, layers):
    """Activations of an R-row micro-batch of `width`-token rows through the `layers`-layer model: four stack passes
    (1 and 2 layers x 1 and 2 rows: a layer = 2 layers - 1, a row = 2 rows - 1) and two kernel passes (one and two
    of its chunks: bytes per token beyond its per-chunk buffers), integer byte counts. The layers are identical and
    each moment adds up row by row (tests/test_memory.py checks 3 layers and 3 rows against passes of their own);
    every response token is counted as a kernel token (an upper bound), and in the layers' backward every checkpoint
    as alive throughout (the upper layers' are freed as it goes down: an upper bound)."""
    from loss import _CHUNK_ELEMENTS
    key, V, H = json.dumps(config_json, sort_keys=True), int(config_json["vocab_size"]), int(config_json["hidden_size"])
    chunk = max(1, _CHUNK_ELEMENTS // V)
    k1, k2 = _kernel_cached(V, H, chunk, dtype), _kernel_cached(V, H, 2 * chunk, dtype)
    kernel_at = lambda n: k1.peak + (n - chunk) * (k2.peak - k1.peak) / chunk  # noqa: E731  (n >= chunk: exact)
    moments = {}
    for r in (1, 2):
        one, two = (_stack_cached(key, n, r, width, dtype, checkpointing) for n in (1, 2))
        held = one.held + (layers - 1) * (two.held - one.held)
        moments[r] = {"kernel": held + kernel_at(r * width),
                      "layers": held + max(one.layers_peak - one.held, two.layers_peak - two.held),
                      "embedding": max(one.embedding_peak, two.embedding_peak)}
    lin = lambda m: (2.0 * moments[1][m] - moments[2][m], float(moments[2][m] - moments[1][m]))  # noqa: E731
    return Activations(width=width, kernel=lin("kernel"), layers=lin("layers"), embedding=lin("embedding"))


# ---------------------------------------------------------------------------------------------
# The plan.

@dataclass
class Term:
    name: str
    bytes: float
    source: str  # "arithmetic" | "measured" | "assumption" | "config"


@dataclass
class Phase:
    name: str
    terms: list
    note: str = ""
    peak_override: Optional[float] = None  # sync: the larger of its two moments

    def total(self):
        return self.peak_override if self.peak_override is not None else sum(t.bytes for t in self.terms)


@dataclass
class Plan:
    config_name: str
    shape: ModelShape
    world_size: int
    card: float
    width: int
    rows: float            # rows of `width` tokens in the largest micro-batch the config allows
    phases: list
    max_tokens: int        # the largest micro_batch_tokens that keeps HEADROOM free in the update (0: none)
    kv_tokens: int         # the engine's KV cache, tokens (rollout)
    fixes: list = field(default_factory=list)   # (key, value, why): what to change when a phase does not fit

    def limit(self):
        return (1 - HEADROOM) * self.card

    def fits(self):
        return all(p.total() <= self.limit() for p in self.phases) and self.kv_tokens >= self.width

    def phase(self, name):
        return next(p for p in self.phases if p.name == name)


def row_width(cfg, shape):
    """The widest row a micro-batch can hold: prompt + response within the engine's max_model_len (the model's
    max positions by default); with share_prompt a prompt and its G responses (planned with a dense mask)."""
    if cfg.share_prompt:
        return cfg.data.max_prompt_tokens + cfg.G * cfg.rollout.max_tokens
    cap = cfg.rollout.max_model_len or shape.max_positions or 10**9
    return min(cfg.data.max_prompt_tokens + cfg.rollout.max_tokens, cap)


def micro_rows(cfg, width):
    """Rows of `width` tokens in the largest micro-batch: min(micro_batch_tokens, micro_batch_size x width)
    tokens (narrower rows pack more of them, never more tokens), or micro_batch_size rows without a token cap."""
    mbt = cfg.micro_batch_tokens
    tokens = min(mbt, cfg.micro_batch_size * width) if mbt else cfg.micro_batch_size * width
    return tokens / width


def _update_terms(cfg, shape, N, act, rows):
    """The update phase with the engine asleep (engine and context terms are added by plan()): the terms held
    through the whole update, and the terms of each moment of a micro-batch's backward (its peak is the largest)."""
    P, Pl, Pr = shape.params(), shape.layer_params(), shape.root_params()
    b = DTYPE_BYTES[cfg.model.dtype]  # FSDP2's compute (param) dtype; gradients reduce in float32
    head = shape.vocab * shape.hidden
    rank_tokens = math.ceil(cfg.prompts_per_step / N) * cfg.G * row_width(cfg, shape)
    ckpt = "with" if cfg.model.gradient_checkpointing else "without"
    resident = [
        Term("float32 master weights, sharded: 4 B x P / N", 4 * P / N, "arithmetic"),
        Term("AdamW m and v, float32, sharded: 8 B x P / N", 8 * P / N, "arithmetic"),
        # grad_sync "step": every rank accumulates unsharded float32 gradients until the mini-batch's last backward,
        # whose reduce-scatter turns them into sharded ones layer by layer (the two never coexist in full)
        Term("float32 gradients, sharded: 4 B x P / N", 4 * P / N if cfg.grad_sync == "micro_batch" else 0.0,
             "arithmetic"),
        Term("float32 gradients accumulated unsharded between micro-batches (grad_sync step): 4 B x P",
             4 * P if cfg.grad_sync == "step" else 0.0, "arithmetic"),
        Term("KL reference's float32 weights, sharded (loss.kl_beta > 0): 4 B x P / N",
             4 * P / N if cfg.loss.kl_beta else 0.0, "arithmetic"),
        Term(f"the step's micro-batch plan: {PLAN_BYTES_PER_TOKEN} B x the rank's {rank_tokens:,} tokens at most",
             PLAN_BYTES_PER_TOKEN * rank_tokens, "arithmetic"),
        Term("the root gathered (embedding, LM head, final norm) in the compute dtype", b * Pr, "arithmetic"),
    ]
    moments = {
        "the LM-head kernel's backward": [
            Term(f"activations of {rows:g} rows x {act.width} {ckpt} checkpointing, all kept, and the kernel's "
                 "buffers", act.at("kernel", rows), "measured")],
        "a decoder layer's backward": [
            Term("two decoder layers gathered (one prefetched)", 2 * b * Pl, "arithmetic"),
            Term("a layer's gradients, compute dtype + float32 reduce-scatter buffers", (b + 4 + 4 / N) * Pl,
                 "arithmetic"),
            Term("the LM head's gradient, held to the end of the backward", b * head, "arithmetic"),
            Term(f"activations of {rows:g} rows x {act.width} {ckpt} checkpointing, kept and the layers' working set",
                 act.at("layers", rows), "measured")],
        "the embedding's backward and the root's reduce-scatter": [
            Term("the root's gradients, compute dtype + float32 reduce-scatter buffers", (b + 4 + 4 / N) * Pr,
                 "arithmetic"),
            Term("the embedding backward's working set (its weight's gradient once more)",
                 act.at("embedding", rows), "measured")],
    }
    return resident, moments


def _engine_bytes(cfg):
    return DTYPE_BYTES.get(cfg.sampler_dtype, 2)


def plan(cfg, model_json, world_size, card_bytes=CARD_BYTES, name="", advise=True):
    """The Plan of `cfg` (a config.TrainConfig) for the model of `model_json` (its config.json as a dict) on
    `world_size` GPUs of `card_bytes` each; `advise`: find the one change that makes a plan that does not fit fit."""
    if world_size < 1:
        raise PlanError(f"world size must be >= 1, got {world_size}")
    shape = ModelShape.from_config(model_json)
    N, P = world_size, shape.params()
    width = row_width(cfg, shape)
    act = measure_activations(model_json, width, cfg.model.dtype, cfg.model.gradient_checkpointing, shape.layers)
    rows = micro_rows(cfg, width)
    e = _engine_bytes(cfg)
    nccl = NCCL_BUFFERS if N > 1 else 0.0
    outside = [Term("CUDA context and workspaces", CUDA_CONTEXT, "assumption"),
               Term("NCCL buffers (world size > 1)", nccl, "assumption")]
    engine_awake = cfg.rollout.gpu_memory_utilization * card_bytes

    # update: the engine asleep (or awake with rollout.sleep false)
    def update_phase(rows):
        resident, moments = _update_terms(cfg, shape, N, act, rows)
        which = max(moments, key=lambda m: sum(t.bytes for t in moments[m]))
        moment = moments[which]
        allocator = sum(t.bytes for t in resident + moment)
        terms = resident + moment + [
            Term(f"fragmentation: {FRAGMENTATION:.0%} of the trainer's allocations", FRAGMENTATION * allocator,
                 "assumption"),
            Term("vLLM engine asleep (level 2: its CUDA graphs stay)" if cfg.rollout.sleep else
                 "vLLM engine awake (rollout.sleep false)", ENGINE_ASLEEP if cfg.rollout.sleep else engine_awake,
                 "assumption" if cfg.rollout.sleep else "config"),
            *outside]
        others = ", ".join(f"{m} {sum(t.bytes for t in ts) / GB:.2f}" for m, ts in moments.items() if m != which)
        return Phase("update", terms, note=f"the backward's largest moment: {which} (the others: {others} GB)")

    update = update_phase(rows)
    # rollout: the trainer idle (gradients freed by zero_grad, the allocator's cache emptied before the sync)
    trainer_idle = [Term("float32 master weights + AdamW m, v, sharded: 12 B x P / N", 12 * P / N, "arithmetic"),
                    Term("KL reference's float32 weights, sharded", 4 * P / N if cfg.loss.kl_beta else 0.0,
                         "arithmetic")]
    rollout = Phase("rollout", trainer_idle + [
        Term(f"vLLM engine awake: gpu_memory_utilization {cfg.rollout.gpu_memory_utilization} x the card",
             engine_awake, "config"), *outside])
    kv = engine_awake - e * P - ENGINE_WORKSPACE
    kv_tokens = max(0, int(kv // shape.kv_bytes_per_token(e)))
    rollout.note = (f"inside the engine's {engine_awake / GB:.1f} GB: weights {e * P / GB:.2f}, activations and CUDA "
                    f"graphs ~{ENGINE_WORKSPACE / GB:.0f} (assumption), KV cache ~{max(kv, 0) / GB:.1f} = "
                    f"{kv_tokens:,} tokens ({kv_tokens // max(width, 1)} sequences of {width})")
    # sync: weights woken and loaded one gathered parameter at a time, then the KV cache wakes (= rollout)
    big = shape.largest_param()
    load = trainer_idle + [
        Term(f"engine weights woken ({cfg.sampler_dtype})", e * P, "arithmetic"),
        Term("engine asleep: the rest of its memory (CUDA graphs)", ENGINE_ASLEEP, "assumption"),
        Term("the largest parameter gathered in the engine's dtype, and its cast shard", e * big * (1 + 1 / N),
             "arithmetic"), *outside]
    load_total = sum(t.bytes for t in load)
    sync = Phase("sync", load, note=f"loading the weights {load_total / GB:.2f} GB; then the KV cache wakes: the "
                                    f"rollout's {rollout.total() / GB:.2f} GB",
                 peak_override=max(load_total, rollout.total()))

    p = Plan(name, shape, N, card_bytes, width, rows, [rollout, update, sync], max_tokens=0, kv_tokens=kv_tokens)
    # the largest micro_batch_tokens whose update keeps the headroom (the update grows with the tokens: bisection)
    fits = lambda tokens: update_phase(tokens / width).total() <= p.limit()  # noqa: E731
    lo, hi = 0, width
    while fits(hi) and hi < 2**30:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        lo, hi = ((lo + hi) // 2, hi) if fits((lo + hi) // 2) else (lo, (lo + hi) // 2)
    p.max_tokens = lo if lo >= width else 0  # a single row of the widest must fit, or nothing trains
    p.fixes = _fixes(cfg, p, model_json) if advise and not p.fits() else []
    return p


def _one_fix(cfg, p, model_json):
    """(key, value, why, changed cfg) for the first phase of `p` that does not fit: the first change, in this order,
    after which that phase fits; None when none does."""
    import dataclasses
    width, limit = p.width, p.limit()
    over = {ph.name: ph.total() for ph in p.phases if ph.total() > limit}
    tries = []
    if "update" in over:
        why = f"the update needs {over['update'] / GB:.1f} GB"
        if not cfg.model.gradient_checkpointing:
            tries.append(("model.gradient_checkpointing", "true", why + ", every layer's activations kept",
                          dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, gradient_checkpointing=True))))
        if p.max_tokens >= width:
            mbt = p.max_tokens // width * width
            tries.append(("micro_batch_tokens", str(mbt), why, dataclasses.replace(cfg, micro_batch_tokens=mbt)))
        if cfg.grad_sync == "step":
            alt = dataclasses.replace(cfg, grad_sync="micro_batch")
            q = plan(alt, model_json, p.world_size, p.card, advise=False)
            mbt = min(cfg.micro_batch_tokens or q.max_tokens, q.max_tokens) // width * width
            if mbt >= width:
                tries.append(("grad_sync", "micro_batch" + (f" micro_batch_tokens={mbt}"
                                                           if mbt != cfg.micro_batch_tokens else ""),
                              why + f", {4 * p.shape.params() / GB:.1f} of it unsharded float32 gradients",
                              dataclasses.replace(alt, micro_batch_tokens=mbt)))
        phase = "update"
    elif over or p.kv_tokens < width:
        e = _engine_bytes(cfg)
        need = e * p.shape.params() + ENGINE_WORKSPACE + width * p.shape.kv_bytes_per_token(e)
        room = limit - (p.phase("rollout").total() - cfg.rollout.gpu_memory_utilization * p.card)
        if need <= room:
            util = (math.floor(room / p.card * 100) if over else math.ceil(need / p.card * 100)) / 100
            why = (f"{next(iter(over))} needs {next(iter(over.values())) / GB:.1f} GB" if over else
                   f"the engine's budget holds no {width}-token sequence's KV cache")
            tries.append(("rollout.gpu_memory_utilization", f"{util:.2f}", why,
                          dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, gpu_memory_utilization=util))))
        phase = next(iter(over), "rollout")
    else:
        return None
    for key, value, why, alt in tries:
        q = plan(alt, model_json, p.world_size, p.card, advise=False)
        if q.phase(phase).total() <= limit and (phase == "update" or q.kv_tokens >= width):
            return key, value, why, alt
    return None


def _fixes(cfg, p, model_json):
    """[(key, value, why)]: the changes that make the plan fit, phase by phase (_one_fix), at this world size or
    else at the smallest larger power of two where they exist (then the world size comes first); [] if none."""
    for n in [p.world_size] + [2**k for k in range(1, 7) if 2**k > p.world_size]:
        changes, alt = [], cfg
        q = plan(alt, model_json, n, p.card, advise=False)
        for _ in range(4):
            fix = None if q.fits() else _one_fix(alt, q, model_json)
            if fix is None:
                break
            changes.append(fix[:3])
            alt = fix[3]
            q = plan(alt, model_json, n, p.card, advise=False)
        if q.fits():
            if n == p.world_size:
                return changes
            over = ", ".join(ph.name for ph in p.phases if ph.total() > p.limit())
            return [("world size", str(n), f"{over} {'do' if ',' in over else 'does'} not fit at world size "
                                           f"{p.world_size}")] + changes
    return []


def smallest_world_size(cfg, model_json, card_bytes=CARD_BYTES, largest=64):
    """The smallest world size (powers of two up to `largest`) at which the config fits as it stands; None."""
    n = 1
    while n <= largest:
        if plan(cfg, model_json, n, card_bytes, advise=False).fits():
            return n
        n *= 2
    return None


def advice(p):
    """One line: what to change, or '' when the plan fits."""
    if p.fits():
        return ""
    head = f"memory plan: does not fit {p.card / GB:.0f} GB with {HEADROOM:.0%} headroom at world size {p.world_size}"
    if not p.fixes:
        over = ", ".join(f"{ph.name} {ph.total() / GB:.1f} GB" for ph in p.phases if ph.total() > p.limit())
        return f"{head} ({over or 'no KV cache room'}) and no single change of one key or of the world size fits"
    how = " and ".join(f"run on {v} GPUs" if k == "world size" else f"set {k}={v}" for k, v, _ in p.fixes)
    return f"{head}: {p.fixes[0][2]}; {how}"


def check(cfg, world_size, card_bytes):
    """PlanError (one line naming the change) unless the run fits `world_size` GPUs of `card_bytes` with the
    headroom; train.py calls it on GPUs before it builds a model or an engine."""
    p = plan(cfg, read_model_config(cfg.model.path), world_size, card_bytes)
    if not p.fits():
        raise PlanError(f"{advice(p)} (python train.py --config ... --memory-plan --world-size {world_size} prints "
                        "it term by term)")
    return p


def format_plan(p, cfg):
    """The plan as a table: each phase's terms (GB and where the figure comes from), its total against the
    limit, and the largest micro_batch_tokens."""
    lines = [f"memory plan{' for ' + p.config_name if p.config_name else ''}: {p.shape.describe()}; "
             f"P = {p.shape.params():,} parameters (a layer {p.shape.layer_params():,}, root "
             f"{p.shape.root_params():,})",
             f"world size {p.world_size}, {p.card / GB:.1f} GB per GPU, limit {p.limit() / GB:.1f} GB "
             f"({HEADROOM:.0%} headroom); {cfg.model.dtype} compute, grad_sync {cfg.grad_sync}, micro-batches of "
             f"{p.rows:g} rows x {p.width} tokens (micro_batch_tokens {cfg.micro_batch_tokens}, micro_batch_size "
             f"{cfg.micro_batch_size})"]
    for ph in p.phases:
        lines.append(f"\n{ph.name}:")
        for t in ph.terms:
            if t.bytes:
                lines.append(f"  {t.bytes / GB:8.2f}  {t.name}  [{t.source}]")
        if ph.note:
            lines.append(f"  ({ph.note})")
        ok = "fits" if ph.total() <= p.limit() else "DOES NOT FIT"
        lines.append(f"  {ph.total() / GB:8.2f}  total of {p.limit() / GB:.1f}: {ok}")
    lines.append(f"\nlargest micro_batch_tokens with {HEADROOM:.0%} headroom: "
                 + (f"{p.max_tokens:,} ({p.max_tokens // p.width} rows of {p.width})" if p.max_tokens
                    else "none (not one row fits)"))
    lines.append(advice(p) or "memory plan: fits")
    return "\n".join(lines)
