"""Training memory at real Qwen2.5 shapes, measured on the CPU: activations per token per decoder layer with and
without gradient checkpointing (bfloat16 and float32), the LM-head kernel's buffers, and FSDP2's gradients; then the
peak per GPU those figures give, and the micro_batch_tokens that keeps 15% of an 80 GB card free.

    python benchmarks/bench_memory.py                       # Qwen2.5-1.5B shapes (Qwen2.5-Math-1.5B's), row width 4096
    python benchmarks/bench_memory.py --shape qwen2.5-0.5b --width 1536

How it measures. A Qwen2 decoder stack built from a Qwen2Config with the real layer shapes (random weights, 1 and 2
layers, a small vocabulary: the embedding's activations are one hidden state per token whatever V is) runs forward
and backward on one packed row of `--width` tokens holding two sequences (position ids restart, so transformers
builds the [S, S] attention mask, as in the trainer's packed micro-batches). A TorchDispatchMode records the storage
of every tensor an op returns; the bytes still alive when the forward returns are what the autograd graph (or the
checkpoints' saved inputs) keeps for the backward, and the largest sum of live bytes seen between ops in the backward
is its working set (weight gradients are dropped as soon as they are accumulated: FSDP2 takes them per layer, and
they are counted apart, per parameter; one weight's gradient, at most 2 B x 8960 x 1536 = 27.5 MB, is in it). The
difference between 2 layers and 1 is one layer's; the figures are divided by the row's tokens. The kernel
(loss.token_logprobs) runs at the real V and H on one and on two chunks of tokens.
What the CPU cannot show: kernels' internal workspaces (cuBLAS, attention) and the CUDA allocator's fragmentation;
gpu_check.py --real-shape measures those on the GPU (torch.cuda.max_memory_allocated).
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.multiprocessing.reductions import StorageWeakRef

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loss import token_logprobs  # noqa: E402

SHAPES = {  # the models' config.json: hidden, intermediate, heads, KV heads, layers, vocab (all tie embeddings)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                         num_hidden_layers=28, vocab_size=151936),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                         num_hidden_layers=24, vocab_size=151936),
}
GB, KIB = 1e9, 1024
CARD_BYTES = 80e9   # "an 80 GB card", counted in decimal GB (an H100 80GB holds a little more: this errs low)
HEADROOM = 0.15


class LiveStorages(TorchDispatchMode):
    """Bytes of the storages that ops returned while this mode was on and that are still alive, and the largest
    such sum seen after any op (`peak`, reset by reset_peak). Storages of `existing` tensors (parameters, inputs)
    are not counted: ops return views of them (a weight's transpose), which allocate nothing."""

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


@dataclasses.dataclass
class StackBytes:
    """One forward + backward of a decoder stack on one row: bytes alive after the forward, and the backward's
    largest live bytes beyond those."""
    held: int
    backward_extra: int


def measure_stack(shape, layers, dtype, checkpointing, width):
    from transformers import Qwen2Config, Qwen2Model
    cfg = Qwen2Config(**{**shape, "num_hidden_layers": layers, "vocab_size": 1024}, attn_implementation="sdpa",
                      max_position_embeddings=max(width, 4096), use_cache=False)
    torch.manual_seed(0)
    model = Qwen2Model(cfg).to(dtype)
    model.train()  # transformers' layers checkpoint only in train mode
    if checkpointing:
        model.gradient_checkpointing_enable()
    for p in model.parameters():  # weight gradients leave at once (FSDP2 reduces or accumulates them per layer:
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))  # counted apart, per parameter)
    half = width // 2
    input_ids = torch.randint(0, 1024, (1, width))
    position_ids = torch.cat([torch.arange(half), torch.arange(width - half)])[None]  # two packed sequences
    probe = torch.randn(1, width, shape["hidden_size"], dtype=dtype)
    mode = LiveStorages([*model.parameters(), *model.buffers(), input_ids, position_ids, probe])
    with mode:
        hidden = model(input_ids=input_ids, position_ids=position_ids).last_hidden_state
        loss = (hidden * probe).float().sum()
        held = mode.live()
        mode.reset_peak()
        loss.backward()
        backward_extra = mode.peak - held
    return StackBytes(held, backward_extra)


def per_layer_per_token(shape, dtype, checkpointing, width):
    """(held per token per layer, held per token outside the layers, backward working set per token): from the
    stacks of 1 and 2 layers."""
    one, two = (measure_stack(shape, n, dtype, checkpointing, width) for n in (1, 2))
    layer = (two.held - one.held) / width
    return {"layer": layer, "outside": (one.held - layer * width) / width, "backward": two.backward_extra / width}


def measure_kernel(shape, n_tokens):
    """loss.token_logprobs at the real V and H, bf16 hidden states and LM head (FSDP2's compute dtype): the bytes
    alive at the peak of the forward and of the backward, beyond its inputs."""
    torch.manual_seed(0)
    V, H = shape["vocab_size"], shape["hidden_size"]
    h = torch.randn(n_tokens, H, dtype=torch.bfloat16).requires_grad_()
    w = (torch.randn(V, H) * 0.02).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, V, (n_tokens,))
    mode = LiveStorages([h, w, targets])
    with mode:
        logp, ent = token_logprobs(h, w, targets)
        forward_peak = mode.peak
        held = mode.live()
        mode.reset_peak()
        (logp.sum() + 0.01 * ent.sum()).backward()
        return {"forward_peak": forward_peak, "held": held, "backward_peak": mode.peak}


def parameter_counts(shape):
    """Parameters of the whole model and of one decoder layer (tied embeddings), counted on the meta device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(**shape, tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    return {"total": sum(p.numel() for p in model.parameters()),
            "layer": sum(p.numel() for p in model.model.layers[0].parameters()),
            "root": sum(p.numel() for n, p in model.named_parameters() if ".layers." not in n)}


@dataclasses.dataclass
class Budget:
    """The peak per GPU during the update (engine asleep), bytes: fixed(N) + per_token x micro-batch tokens."""
    state: float           # fp32 weights + AdamW m, v: 12 B per parameter, sharded over N
    grads_sharded: float   # fp32 gradients after the reduce-scatter: 4 B per parameter / N
    grads_unsharded: float  # grad_sync step: FSDP2 accumulates unsharded fp32 gradients, 4 B per parameter, every rank
    gathered: float        # bf16 root (embedding = LM head) + two decoder layers unsharded (one prefetched), and
                           # one layer's bf16 gradients before FSDP2 reduces or accumulates them
    kernel: float          # the LM-head kernel's backward peak (fp32 weight copy and gradient, chunk buffers)
    reference: float       # the KL reference's fp32 weights (loss.kl_beta > 0): 4 B per parameter / N
    engine_asleep: float   # vLLM at sleep level 2 keeps CUDA graphs and workspaces: an estimate, not measured
    cuda_context: float    # CUDA context and allocator slack: an estimate, not measured
    per_token: float       # activations: L x checkpointed layer + outside the layers + the backward's working set

    def fixed(self):
        return (self.state + self.grads_sharded + self.grads_unsharded + self.gathered + self.kernel + self.reference
                + self.engine_asleep + self.cuda_context)

    def peak(self, tokens):
        return self.fixed() + self.per_token * tokens

    def max_tokens(self):
        return int(((1 - HEADROOM) * CARD_BYTES - self.fixed()) / self.per_token)


def budget(counts, layers, act, kernel, n_gpus, *, kl_reference=False):
    """The Budget at n_gpus from the parameter counts, the measured activations (bytes per token) and kernel peak.
    Both gradient terms are counted in full: conservative at 1 GPU, where the reduce-scatter's sharded gradients
    replace the accumulated ones layer by layer."""
    P = counts["total"]
    return Budget(state=12 * P / n_gpus, grads_sharded=4 * P / n_gpus, grads_unsharded=4 * P,
                  gathered=2 * (counts["root"] + 3 * counts["layer"]), kernel=kernel["backward_peak"],
                  reference=4 * P / n_gpus if kl_reference else 0.0, engine_asleep=2e9, cuda_context=1e9,
                  per_token=layers * act["layer"] + act["outside"] + act["backward"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--width", type=int, default=4096, help="tokens in the measured row (the configs' widest row: "
                                                            "prompt 1024 + response 3072)")
    ap.add_argument("--micro-batch-tokens", type=int, nargs="+", default=[32768], help="peaks to print")
    ap.add_argument("--kl-reference", action="store_true", help="count a KL reference's weights (loss.kl_beta > 0)")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    L = shape["num_hidden_layers"]
    t0 = time.perf_counter()
    print(f"{args.shape}: hidden {shape['hidden_size']}, intermediate {shape['intermediate_size']}, heads "
          f"{shape['num_attention_heads']} / {shape['num_key_value_heads']} KV, {L} layers, V {shape['vocab_size']}; "
          f"one packed row of {args.width} tokens (2 sequences); measured on the CPU")
    acts = {}
    print("\nactivations, KiB per token (measured):")
    print(f"  {'dtype':9} {'checkpointing':13} {'per layer':>10} {'outside layers':>15} {'backward working set':>21} "
          f"{'all layers':>11}")
    for dtype in (torch.bfloat16, torch.float32):
        for ckpt in (False, True):
            a = acts[(dtype, ckpt)] = per_layer_per_token(shape, dtype, ckpt, args.width)
            print(f"  {str(dtype)[6:]:9} {'on' if ckpt else 'off':13} {a['layer'] / KIB:>10.2f} "
                  f"{a['outside'] / KIB:>15.2f} {a['backward'] / KIB:>21.2f} "
                  f"{(L * a['layer'] + a['outside'] + a['backward']) / KIB:>11.1f}", flush=True)
    one_chunk = max(1, 2**25 // shape["vocab_size"])  # loss.py's default chunk
    kernels = {n: measure_kernel(shape, n) for n in (one_chunk, 2 * one_chunk)}
    print(f"\nLM-head kernel (loss.token_logprobs, bf16 inputs, fp32 inside), GB (measured; a chunk is {one_chunk} "
          f"tokens):")
    for n, k in kernels.items():
        print(f"  {n:5} tokens: forward peak {k['forward_peak'] / GB:.3f}, kept for backward {k['held'] / GB:.4f}, "
              f"backward peak {k['backward_peak'] / GB:.3f}")
    counts = parameter_counts(shape)
    P = counts["total"]
    print(f"\nparameters: {P:,} (one layer {counts['layer']:,}; embedding = LM head + final norm {counts['root']:,})")
    print(f"FSDP2, grad_sync step (arithmetic on the parameter count): unsharded fp32 gradients accumulated between "
          f"micro-batches on every rank 4 B x P = {4 * P / GB:.2f} GB; sharded fp32 gradients 4 B x P / N; fp32 "
          f"weights + AdamW m, v 12 B x P / N = {12 * P / GB:.2f} GB / N")
    act = acts[(torch.bfloat16, True)]
    kernel = kernels[2 * one_chunk]
    print(f"\npeak per GPU in the update, bf16 with checkpointing (GB; engine asleep ~2 and CUDA context ~1 are "
          f"estimates): fixed(N) + {(L * act['layer'] + act['outside'] + act['backward']) / KIB:.1f} KiB x "
          f"micro-batch tokens")
    for n_gpus in (1, 8):
        b = budget(counts, L, act, kernel, n_gpus, kl_reference=args.kl_reference)
        peaks = ", ".join(f"{t} tokens {b.peak(t) / GB:.1f}" for t in args.micro_batch_tokens)
        print(f"  {n_gpus} GPU{'s' if n_gpus > 1 else ''}: state {b.state / GB:.2f} + grads {b.grads_sharded / GB:.2f}"
              f" + unsharded grads {b.grads_unsharded / GB:.2f} + gathered bf16 {b.gathered / GB:.2f} + kernel "
              f"{b.kernel / GB:.2f} + KL reference {b.reference / GB:.2f} + engine asleep {b.engine_asleep / GB:.0f} + context {b.cuda_context / GB:.0f} = "
              f"fixed {b.fixed() / GB:.2f}; {peaks}; at most {b.max_tokens()} tokens for "
              f"{100 * HEADROOM:.0f}% headroom on {CARD_BYTES / GB:.0f} GB")
    no_ckpt = acts[(torch.bfloat16, False)]
    per_token = L * no_ckpt["layer"] + no_ckpt["outside"] + no_ckpt["backward"]
    print(f"  without checkpointing: {per_token / KIB:.1f} KiB per token: "
          + ", ".join(f"{t} tokens {(budget(counts, L, no_ckpt, kernel, 1).peak(t)) / GB:.1f} GB at 1 GPU"
                      for t in args.micro_batch_tokens))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
