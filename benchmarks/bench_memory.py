"""Activation memory at real model shapes, as the memory plan measures it (memory.stack_pass, memory.kernel_pass): per token, what a
decoder layer keeps for the backward, what is kept outside the layers, the LM-head kernel's share, and the
working sets of the kernel's and the layers' backward, with gradient checkpointing on and off.

    python benchmarks/bench_memory.py                                   # the GPU configs' models at their row widths
    python benchmarks/bench_memory.py --shape qwen2.5-math-7b --width 4096 --rows 16
    python benchmarks/bench_memory.py --model-config DIR --width 4096   # any model: DIR holds its config.json
    python benchmarks/bench_memory.py --check-real 128                  # fake against real runs (bf16, CPU)
    torchrun --nproc_per_node 2 benchmarks/bench_memory.py --host-rss models/smollm2-135m-instruct --load rank0
                                                # peak host memory per rank of policy.load_policy (rank0) or of
                                                # every rank reading the whole model (every-rank, the old load)

How it measures: the model's own transformers layers (1 and 2 of them, random weights) on packed rows of S tokens
(two sequences per row, position ids restarting: the trainer's packed-row attention mask), and loss.token_logprobs
at the real V and H, run forward and backward under torch's FakeTensorMode, with a TorchDispatchMode that records the
storage of every tensor an op returns. No data and no arithmetic: the bytes are those of the CPU run, at the real
shapes and widths (--check-real runs both and compares them). Weight gradients are dropped as they arrive (FSDP2
takes them per layer; the plan counts them per parameter). What the CPU's kernels cannot show (CUDA's attention
and cuBLAS workspaces, the allocator's fragmentation): gpu_check.py --real-shape compares the plan with a GPU.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import memory  # noqa: E402

# The measured models' layer-shape fields of config.json (the whole files are in tests/test_memory.py) and the
# row width of the config that uses each (data.max_prompt_tokens + rollout.max_tokens).
SHAPES = {
    "qwen2.5-0.5b": (dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                          num_key_value_heads=2, num_hidden_layers=24, vocab_size=151936, tie_word_embeddings=True),
                     1536),
    "qwen2.5-math-1.5b": (dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                               num_key_value_heads=2, num_hidden_layers=28, vocab_size=151936,
                               tie_word_embeddings=True), 4096),
    "qwen2.5-math-7b": (dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                             num_key_value_heads=4, num_hidden_layers=28, vocab_size=152064,
                             tie_word_embeddings=False), 4096),
    "qwen3-4b": (dict(model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, num_hidden_layers=36, vocab_size=151936,
                      tie_word_embeddings=True), 6144),
    "smollm2-135m": (dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                          num_key_value_heads=3, num_hidden_layers=30, vocab_size=49152, tie_word_embeddings=True),
                     640),
}
KIB = 1024


def breakdown(config_json, width, checkpointing, dtype="bfloat16"):
    """Bytes of a micro-batch of rows of `width` tokens as (a constant per micro-batch, bytes per token), from 1 and
    2 layers x 1 and 2 rows and the kernel at one and two chunks: kept per layer, kept outside the layers, kept by
    the LM-head kernel, the kernel backward's working set, the layers' backward working set, and all alive in the
    embedding's backward (constants: the kernel's float32 head, its gradient and chunk buffers; the embedding's
    gradient)."""
    from loss import _CHUNK_ELEMENTS
    V, H = config_json["vocab_size"], config_json["hidden_size"]
    chunk = max(1, _CHUNK_ELEMENTS // V)
    k1, k2 = (memory.kernel_pass(V, H, n, dtype) for n in (chunk, 2 * chunk))
    out = {}
    for r in (1, 2):
        one, two = (memory.stack_pass(config_json, n, r, width, dtype, checkpointing) for n in (1, 2))
        layer = two.held - one.held
        n = r * width
        k_held = k1.held + (n - chunk) * (k2.held - k1.held) / chunk
        k_peak = k1.peak + (n - chunk) * (k2.peak - k1.peak) / chunk
        out[r] = {"layer": layer, "outside": one.held - layer, "kernel_kept": k_held, "kernel_work": k_peak - k_held,
                  "layers_work": max(one.layers_peak - one.held, two.layers_peak - two.held),
                  "embedding": max(one.embedding_peak, two.embedding_peak)}
    return {k: (2 * out[1][k] - out[2][k], (out[2][k] - out[1][k]) / width) for k in out[1]}


def report(name, config_json, width, rows):
    shape = memory.ModelShape.from_config(config_json)
    print(f"{name}: {shape.describe()}; rows of {width} tokens, bf16; KiB per token (+ GB per micro-batch):")
    print(f"  {'checkpointing':13} {'kept/layer':>10} {'outside':>8} {'kernel kept':>11} {'kernel work':>18} "
          f"{'layers work':>18} {'embedding bwd':>18} {f'peak, {rows} x {width}':>18}")
    for ckpt in (True, False):
        b = breakdown(config_json, width, ckpt)
        at = lambda k: b[k][0] + b[k][1] * rows * width  # noqa: E731  bytes at `rows` rows
        kept = shape.layers * at("layer") + at("outside")
        peak = max(kept + at("kernel_kept") + at("kernel_work"), kept + at("layers_work"), at("embedding"))
        work = lambda k: f"{b[k][1] / KIB:7.2f} + {b[k][0] / 1e9:5.3f} GB"  # noqa: E731
        print(f"  {'on' if ckpt else 'off':13} {b['layer'][1] / KIB:10.2f} {b['outside'][1] / KIB:8.2f} "
              f"{b['kernel_kept'][1] / KIB:11.2f} {work('kernel_work'):>18} {work('layers_work'):>18} "
              f"{work('embedding'):>18} {peak / 1e9:15.2f} GB", flush=True)


def check_real(width):
    """Fake and real passes of 1 layer, 1 row at each model's shapes and a short width, and of the kernel on 64
    tokens: equal byte counts."""
    for name, (config_json, _) in SHAPES.items():
        for ckpt in (True, False):
            t0 = time.perf_counter()
            fake = memory.stack_pass(config_json, 1, 1, width, "bfloat16", ckpt)
            t1 = time.perf_counter()
            real = memory.stack_pass(config_json, 1, 1, width, "bfloat16", ckpt, real=True)
            t2 = time.perf_counter()
            print(f"{name:18} stack, checkpointing {'on ' if ckpt else 'off'} S {width}: "
                  f"{'equal' if fake == real else 'DIFFER'} ({fake}; fake {t1 - t0:.1f} s, real {t2 - t1:.1f} s)",
                  flush=True)
        V, H = config_json["vocab_size"], config_json["hidden_size"]
        fake, real = (memory.kernel_pass(V, H, 64, "bfloat16", real=r) for r in (False, True))
        print(f"{name:18} LM-head kernel, 64 tokens: {'equal' if fake == real else 'DIFFER'} ({fake})", flush=True)


def load_every_rank(path, model_cfg, temperature, device, trainable=True):
    """The policy as policy.load_policy built it before it read on rank 0 only: every rank reads the whole float32
    model, then FSDP2 shards it (the reference of tests/dist_load.py and of --host-rss every-rank)."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM
    from policy import Policy
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if model_cfg.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    model.train(trainable)
    model.config.use_cache = False
    model.to(device)
    policy = Policy(model, temperature)
    if not trainable:
        policy.requires_grad_(False)
    mp = MixedPrecisionPolicy(param_dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[model_cfg.dtype],
                              reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    return policy


def host_rss(model_dir, load):
    """Under torchrun: each rank's peak resident host memory (ru_maxrss) after imports and after loading the policy
    by `load` ("rank0": policy.load_policy; "every-rank": load_every_rank); rank 0 prints every rank's."""
    import gc
    import resource
    from config import ModelConfig
    from distributed import all_gather, init_distributed, shutdown_distributed, world
    from policy import load_policy
    import transformers.models.auto.modeling_auto  # noqa: F401  (imported first: its memory is not the load's)
    device = init_distributed()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    t0 = time.perf_counter()
    loader = load_policy if load == "rank0" else load_every_rank
    policy = loader(model_dir, ModelConfig(path=model_dir, dtype="float32"), 1.0, device)
    seconds = time.perf_counter() - t0
    gc.collect()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in policy.parameters())
    rows = all_gather((world()[0], before, after, seconds))
    if world()[0] == 0:
        print(f"{model_dir}, load {load}, {world()[1]} ranks, {params:,} parameters "
              f"({4 * params / 2**20:.0f} MiB in float32); peak host RSS per rank, MiB:")
        for rank, b, a, sec in rows:
            print(f"  rank {rank}: after imports {b:7.0f}, after the load {a:7.0f} (+{a - b:.0f}); load {sec:.1f} s")
    del policy
    gc.collect()
    shutdown_distributed()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="one model (default: all)")
    ap.add_argument("--model-config", help="a directory holding a model's config.json (instead of --shape)")
    ap.add_argument("--width", type=int, help="row width (default: its config's)")
    ap.add_argument("--rows", type=int, default=16, help="rows per micro-batch for the peak column")
    ap.add_argument("--check-real", type=int, metavar="WIDTH", help="compare fake and real passes at this width")
    ap.add_argument("--host-rss", metavar="MODEL_DIR", help="under torchrun: peak host memory per rank of a load")
    ap.add_argument("--load", choices=["rank0", "every-rank"], default="rank0", help="--host-rss: which load")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.host_rss:
        host_rss(args.host_rss, args.load)
        return
    if args.check_real:
        check_real(args.check_real)
    elif args.model_config:
        report(args.model_config, memory.read_model_config(args.model_config), args.width or 4096, args.rows)
    else:
        for name in [args.shape] if args.shape else SHAPES:
            config_json, width = SHAPES[name]
            report(name, config_json, args.width or width, args.rows)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
