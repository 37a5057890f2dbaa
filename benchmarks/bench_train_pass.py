"""One training pass (forward + backward) of SmolLM2-135M-Instruct on the CPU: the decoder's linears through
torch's BLAS (MKL) against oneDNN (policy.use_onednn_linears, model.onednn_linears), side by side in one
process, alternating on the same micro-batches; and the matmuls alone, at the model's shapes.

    python benchmarks/bench_train_pass.py [--rounds 4] [--groups 5]

A micro-batch is what configs/experiments/smol.yaml trains: --groups word problems in the chat template, each with its
8 responses behind one shared prompt (share_prompt), ~3.7k tokens at 5 groups. Response lengths are heavy-
tailed as the model's are at 96 new tokens: 70% cut at 96, the rest anywhere in 8-95. Float32.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load():
    return "load %.1f/%.1f/%.1f" % os.getloadavg()


def matmul_table(reps=5):
    """GFLOP/s of the three matmuls of a linear layer (forward, input gradient, weight gradient), MKL vs oneDNN."""
    lp = torch.ops.mkldnn._linear_pointwise
    print("matmul GFLOP/s at SmolLM2's shapes (M tokens = 2048; LM head M = 512), MKL vs oneDNN, medians of", reps)
    for name, (n, k, m) in {"q/k/v": (960, 576, 2048), "gate+up": (3072, 576, 2048), "down": (576, 1536, 2048),
                            "LM head": (49152, 576, 512)}.items():
        w, x, g = torch.randn(n, k), torch.randn(m, k), torch.randn(m, n)
        cases = {"forward x W^T": (lambda: x @ w.t(), lambda: lp(x, w, None, "none", [], "")),
                 "input grad g W": (lambda: g @ w, lambda: lp(g, w.t(), None, "none", [], "")),
                 "weight grad g^T x": (lambda: g.t() @ x, lambda: lp(g.t(), x.t(), None, "none", [], ""))}
        cells = []
        for label, (mkl, dnn) in cases.items():
            times = {mkl: [], dnn: []}
            for _ in range(reps):
                for fn in (mkl, dnn):  # alternating: both see the same load
                    fn()
                    t0 = time.perf_counter()
                    fn()
                    times[fn].append(time.perf_counter() - t0)
            flops = 2 * m * n * k
            cells.append(f"{label} {flops / statistics.median(times[mkl]) / 1e9:.0f} vs "
                         f"{flops / statistics.median(times[dnn]) / 1e9:.0f}")
        print(f"  {name:8} " + "; ".join(cells))


def micro_batches(tok, groups, count, seed=0):
    from policy import make_micro
    from rollout import encode_prompts
    from tiny import word_problem_rows
    G = 8
    rows = word_problem_rows(groups * count, seed)
    prompt_ids = encode_prompts(tok, [r["problem"] for r in rows], "chat", 4096)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(count):
        prompts, outs = [], []
        for p in prompt_ids[b * groups:(b + 1) * groups]:
            for _ in range(G):
                n = 96 if torch.rand((), generator=g) < 0.7 else int(torch.randint(8, 96, (), generator=g))
                prompts.append(p)
                outs.append(torch.randint(100, tok.vocab_size, (n,), generator=g).tolist())
        groups_idx = [list(range(q * G, (q + 1) * G)) for q in range(groups)]
        batches.append(make_micro(prompts, outs, [[1.0] * len(o) for o in outs], groups_idx, 0,
                                  torch.device("cpu"), share_prompt=True))
    return batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--groups", type=int, default=5, help="prompts (with 8 responses each) per micro-batch")
    ap.add_argument("--no-matmuls", action="store_true", help="skip the matmul table")
    args = ap.parse_args()
    if not torch.backends.mkldnn.is_available():
        sys.exit("this torch has no oneDNN (torch.backends.mkldnn.is_available() is False)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scripts import smol
    from policy import Policy, per_token, use_onednn_linears
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, {load()}")
    if not args.no_matmuls:
        matmul_table()
    path = smol.ensure_smollm2(ROOT / smol.DEFAULT_DIR)
    tok = AutoTokenizer.from_pretrained(path)
    variants = {"MKL (torch linears)": AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                "oneDNN (use_onednn_linears)": AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)}
    use_onednn_linears(variants["oneDNN (use_onednn_linears)"])
    policies = {name: Policy(model, 1.0) for name, model in variants.items()}

    def train_pass(policy, mb):
        logp, _ = per_token(policy, mb, grad=True)
        (logp * mb.mask).sum().backward()
        grads = {k: p.grad for k, p in policy.named_parameters()}
        policy.zero_grad(set_to_none=True)
        return grads

    batches = micro_batches(tok, args.groups, args.rounds + 1)
    first = {name: train_pass(policy, batches[0]) for name, policy in policies.items()}  # warm-up, and agreement
    a, b = first.values()
    worst = max(((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-30)).item() for k in a)
    print(f"gradients, oneDNN vs MKL: worst relative difference over parameters {worst:.1e}")
    ms = {name: [] for name in policies}
    for mb in batches[1:]:
        for name, policy in policies.items():
            t0 = time.perf_counter()
            train_pass(policy, mb)
            ms[name].append(1000 * (time.perf_counter() - t0) / mb.input_ids.numel())
        print(f"  {mb.input_ids.numel()} tokens: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in ms.items())
              + f" ms/token  {load()}", flush=True)
    print(f"\nSmolLM2 train pass (forward + backward, shared prompts, {args.groups} x 8 responses per micro-batch), "
          f"medians of {args.rounds}:")
    base = statistics.median(ms["MKL (torch linears)"])
    for name, v in ms.items():
        print(f"  {name:28} {statistics.median(v):.2f} ms/token (spread {min(v):.2f}-{max(v):.2f})  "
              f"{base / statistics.median(v):.2f}x")


if __name__ == "__main__":
    main()
