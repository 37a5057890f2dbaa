"""Naive log_softmax vs loss.py's chunked kernel: forward + backward of a PPO-clip loss, peak memory and time.

    python benchmarks/bench_logprobs.py                       # H = 896, 1536; N = 2048, 4096; V = 151,936
    python benchmarks/bench_logprobs.py --hidden 896 --tokens 2048 --repeats 5

Every measurement runs in a fresh subprocess (float32, CPU, torch's default threads). Peak memory: the
kernel's VmHWM (resident high-water mark) is reset through /proc/self/clear_refs once the inputs exist,
and "extra" = VmHWM after forward + backward minus the resident size before it. "excl. grads" subtracts
grad_hidden and grad_weight (N x H + V x H float32), which any method must allocate. Time: wall clock of
forward + backward. cpu% = process CPU time / (wall x threads): well below 100 means other processes
shared the cores during that run: such runs are discarded (--min-cpu) and retried, up to --max-tries rounds;
`kept` says how many runs of how many the medians use (0/k: every run was noisy, the medians use them all).
Methods are interleaved, one fresh process per run, so slow spells spread over all of them.

Methods (all compute the same loss; entropy is computed as a metric, not differentiated):
  naive       logits = h @ W.T, log_softmax, gather; autograd keeps N x V tensors
  recompute   loss.token_logprobs: chunked forward, the backward recomputes logits (4 matmuls)
  same-pass   loss.token_loss_fused: the token-local loss's gradient is accumulated in the forward (3 matmuls)
  matmuls-x3  only the three N x V x H matmuls of naive (forward, grad_h, grad_W): the time floor
  naive-logp  (not run by default) naive without the entropy metric: a stricter time baseline
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["naive", "recompute", "same-pass", "matmuls-x3", "naive-logp"]


def rss_bytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def ppo_clip_loss(logp, old_logp, advantages, weights):
    ratio = torch.exp(logp - old_logp)
    return -(weights * torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)).sum()


def worker(method, hidden_size, n_tokens, vocab, chunk_size):
    """One forward + backward; prints a JSON line."""
    global torch
    import torch
    sys.path.insert(0, str(ROOT))
    from loss import token_logprobs, token_loss_fused

    torch.manual_seed(0)
    hidden = torch.randn(n_tokens, hidden_size).requires_grad_()
    weight = (torch.randn(vocab, hidden_size) * 0.03).requires_grad_()   # logits of order 1
    targets = torch.randint(0, vocab, (n_tokens,))
    old_logp = torch.full((n_tokens,), -12.0) + torch.randn(n_tokens) * 0.1
    advantages, weights = torch.randn(n_tokens), torch.full((n_tokens,), 1.0 / n_tokens)

    with open("/proc/self/clear_refs", "w") as f:   # reset VmHWM to the current resident size
        f.write("5")
    base = rss_bytes("VmRSS")
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if method in ("naive", "naive-logp"):
        logits = hidden @ weight.T
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(1, targets[:, None]).squeeze(1)
        if method == "naive":
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1)
        ppo_clip_loss(logp, old_logp, advantages, weights).backward()
    elif method == "recompute":
        logp, entropy = token_logprobs(hidden, weight, targets, chunk_size=chunk_size)
        ppo_clip_loss(logp, old_logp, advantages, weights).backward()
    elif method == "same-pass":
        loss, logp, entropy = token_loss_fused(
            hidden, weight, targets, chunk_size=chunk_size,
            loss_fn=lambda lp, ent, rows: ppo_clip_loss(lp, old_logp[rows], advantages[rows], weights[rows]))
        loss.backward()
    elif method == "matmuls-x3":
        with torch.no_grad():
            logits = hidden @ weight.T
            hidden.grad = logits @ weight
            weight.grad = logits.T @ hidden
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    print(json.dumps(dict(
        seconds=seconds, extra=rss_bytes("VmHWM") - base,
        grads=(hidden.grad.numel() + weight.grad.numel()) * 4,
        cpu_share=cpu / (seconds * torch.get_num_threads()), load=os.getloadavg()[0])))


def measure(method, hidden_size, n_tokens, vocab, chunk_size):
    cmd = [sys.executable, __file__, "--worker", method, "--hidden", str(hidden_size), "--tokens", str(n_tokens),
           "--vocab", str(vocab)] + (["--chunk-size", str(chunk_size)] if chunk_size else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{method} H={hidden_size} N={n_tokens} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=[896, 1536])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--repeats", type=int, default=3, help="quiet runs wanted per method")
    p.add_argument("--min-cpu", type=float, default=0.9, help="a run is quiet if cpu%% >= this (0-1)")
    p.add_argument("--max-tries", type=int, default=6, help="rounds of runs at most per configuration")
    p.add_argument("--methods", nargs="+", default=METHODS[:4], choices=METHODS)
    p.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: loss.py's)")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.hidden[0], args.tokens[0], args.vocab, args.chunk_size)

    gb = 1e9
    print(f"V = {args.vocab}, float32, CPU, {os.cpu_count()} cores, medians of {args.repeats} runs "
          f"(fresh process each); ratios are against naive")
    print(f"{'H':>5} {'N':>5} {'method':<11} {'extra GB':>8} {'excl.grads':>10} {'mem ratio':>9} "
          f"{'time s':>7} {'(min-max)':>13} {'time ratio':>10} {'cpu%':>5} {'load':>5} {'kept':>5}")
    for h in args.hidden:
        for n in args.tokens:
            tried, quiet = {m: [] for m in args.methods}, {m: [] for m in args.methods}
            for _ in range(args.max_tries):   # rounds over the methods, until each has --repeats quiet runs
                for m in [m for m in args.methods if len(quiet[m]) < args.repeats]:
                    tried[m].append(measure(m, h, n, args.vocab, args.chunk_size))
                    if tried[m][-1]["cpu_share"] >= args.min_cpu:
                        quiet[m].append(tried[m][-1])
            runs = {m: quiet[m] or tried[m] for m in args.methods}   # all runs were noisy: say so in `kept`
            med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
            for m, rs in runs.items():
                d = med[m]
                net = d["extra"] - d["grads"]
                if "naive" in med:
                    naive_net = med["naive"]["extra"] - med["naive"]["grads"]
                    ratios = (f"{naive_net / max(net, 1):>8.1f}x", f"{d['seconds'] / med['naive']['seconds']:>9.2f}x")
                else:
                    ratios = (f"{'':>9}", f"{'':>10}")
                span = f"({min(r['seconds'] for r in rs):.1f}-{max(r['seconds'] for r in rs):.1f})"
                print(f"{h:>5} {n:>5} {m:<11} {d['extra'] / gb:>8.2f} {net / gb:>10.2f} {ratios[0]} "
                      f"{d['seconds']:>7.1f} {span:>13} {ratios[1]} {100 * d['cpu_share']:>4.0f}% {d['load']:>5.1f} "
                      f"{len(quiet[m]):>2}/{len(tried[m])}",
                      flush=True)


if __name__ == "__main__":
    main()
