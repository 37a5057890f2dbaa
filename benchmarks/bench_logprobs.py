"""Naive log_softmax vs loss.py's chunked kernel: forward + backward of a PPO-clip loss, peak memory and time.

    python benchmarks/bench_logprobs.py                       # H = 896, 1536; N = 2048, 4096; V = 151,936
    python benchmarks/bench_logprobs.py --hidden 896 --tokens 2048 --repeats 5
    python benchmarks/bench_logprobs.py --precision --tokens 4096   # log pi error and time per logprob_precision

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
  same-pass   token_loss_fused (below): the token-local loss's gradient is accumulated in the forward (3 matmuls)
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from loss import token_logprobs  # noqa: E402

METHODS = ["naive", "recompute", "same-pass", "matmuls-x3", "naive-logp"]


class _PrecomputedGrad(torch.autograd.Function):
    """Carries a loss whose gradients w.r.t. hidden and weight were already computed; backward scales them
    in place (no second V x H copy) and hands them over, so a second backward through it is an error."""
    @staticmethod
    def forward(ctx, hidden, weight, loss, grad_h, grad_w):
        ctx.grads = (grad_h, grad_w)
        return loss.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.grads is None:
            raise RuntimeError("token_loss_fused: its loss was already backpropagated once")
        grads, ctx.grads = ctx.grads, None
        return tuple(None if t is None else t.mul_(g.to(t.dtype)) for t in grads) + (None, None, None)


def softmax_chunks(h, w, targets, valid, temperature, chunk_size):
    """The tempered softmax of h @ w.T / temperature, chunk_size tokens at a time, in two float32 [chunk, V]
    buffers reused by every chunk. Yields (rows, z, e, logp, entropy, centre, inv_sum) per chunk: z = logits
    minus each row's max (written in place), e = exp(z), and per token [c] float32: log p(target) (0 where not
    valid), the entropy H = log sum e - E_p[z] (0 where not valid), E_p[z] and 1 / sum e."""
    n, vocab = h.shape[0], w.shape[0]
    z_buf = torch.empty(min(n, chunk_size), vocab, device=h.device)
    e_buf = torch.empty_like(z_buf)
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        z, e = z_buf[: b - a], e_buf[: b - a]
        torch.mm(h[a:b].float() / temperature, w.t(), out=z)
        z.sub_(z.amax(dim=1, keepdim=True))
        torch.exp(z, out=e)
        sum_e = e.sum(dim=1)
        centre = torch.bmm(e[:, None, :], z[:, :, None]).view(-1) / sum_e  # no third [c, V] tensor
        logp = z.gather(1, targets[a:b].clamp(min=0)[:, None])[:, 0] - sum_e.log()
        entropy = sum_e.log() - centre
        ok = valid[a:b]
        yield slice(a, b), z, e, torch.where(ok, logp, 0.0), torch.where(ok, entropy, 0.0), centre, 1.0 / sum_e


def logit_grad(z, e, inv_sum, centre, g_logp, g_entropy, targets, valid):
    """d loss / d z for one chunk from the loss's gradients w.r.t. logp and entropy, written over z and e.
    p = e * inv_sum; d logp_t / dz = onehot(t) - p; d H / dz = -p (z - E_p[z])."""
    g_logp = torch.where(valid, g_logp, 0.0)
    g_entropy = torch.zeros_like(g_logp) if g_entropy is None else torch.where(valid, g_entropy, 0.0)
    # -p (g_logp + g_entropy (z - E_p[z])), then + g_logp at the target
    grad = z.sub_(centre[:, None]).mul_(g_entropy[:, None]).add_(g_logp[:, None]).mul_(e).mul_(-inv_sum[:, None])
    grad[torch.arange(len(targets), device=z.device), targets.clamp(min=0)] += g_logp
    return grad


def token_loss_fused(hidden, weight, targets, loss_fn, *, temperature=1.0, vocab_size=None, chunk_size=None,
                     ignore_index=-100):
    """A token-local loss and its gradient in ONE pass over the vocabulary (three matmuls, no recompute).

    loss_fn(logp [c], entropy [c], rows: slice) -> scalar, called once per chunk of tokens (rows index the
    flattened targets, so the caller can slice its per-token constants: old logprobs, advantages, weights).
    The total loss is the SUM of the chunk values, so loss_fn must be token-local (e.g. the PPO-clip surrogate
    with per-response A_i, W_i; not GSPO's sequence ratio, which needs token_logprobs). Its gradient reaches
    hidden and weight only through logp and entropy: tensors loss_fn closes over get no gradient.
    Ignored tokens enter loss_fn with logp = entropy = 0 and get no gradient.
    Returns (loss, logprobs, entropy): loss is differentiable (its backward scales the stored grad_hidden and
    grad_weight: one float32 V x H tensor is held until then); logprobs and entropy are detached, float32.
    Chunks as loss.token_logprobs's (about 128 MB of float32 logits per buffer by default).
    """
    if hidden.shape[:-1] != targets.shape or weight.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and targets "
                         f"{tuple(targets.shape)} disagree: want [..., H], [V, H] and [...]")
    shape, vocab_size = targets.shape, vocab_size or weight.shape[0]
    chunk_size = chunk_size or max(1, 2**25 // vocab_size)
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).long()
    need_h, need_w = (torch.is_grad_enabled() and x.requires_grad for x in (hidden, weight))
    w = weight.detach()[:vocab_size].float()
    valid = t != ignore_index
    grad_h = torch.zeros(h.shape, device=h.device) if need_h else None
    grad_w = torch.zeros(weight.shape, device=weight.device) if need_w else None
    logp, entropy = torch.zeros(len(t), device=h.device), torch.zeros(len(t), device=h.device)
    total = torch.zeros((), device=h.device)
    for rows, z, e, lp, ent, centre, inv_sum in softmax_chunks(h.detach(), w, t, valid, temperature, chunk_size):
        logp[rows], entropy[rows] = lp, ent
        with torch.enable_grad():
            lp, ent = lp.requires_grad_(), ent.requires_grad_()
            chunk_loss = loss_fn(lp, ent, rows)
            if chunk_loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar per chunk, got shape {tuple(chunk_loss.shape)}")
            g_logp, g_entropy = (torch.autograd.grad(chunk_loss, (lp, ent), allow_unused=True)
                                 if chunk_loss.requires_grad else (None, None))
        total += chunk_loss.detach().float()
        if not (need_h or need_w) or (g_logp is None and g_entropy is None):
            continue
        g_logp = torch.zeros_like(lp) if g_logp is None else g_logp
        grad = logit_grad(z, e, inv_sum, centre, g_logp, g_entropy, t[rows], valid[rows])
        if need_h:
            torch.mm(grad, w, out=grad_h[rows]).div_(temperature)
        if need_w:
            grad_w[:vocab_size].addmm_(grad.t(), h[rows].detach().float() / temperature)
    if need_h:
        grad_h = grad_h.to(hidden.dtype).view(hidden.shape)
    if need_w:
        grad_w = grad_w.to(weight.dtype)
    loss = _PrecomputedGrad.apply(hidden, weight, total, grad_h, grad_w) if need_h or need_w else total
    return loss, logp.view(shape), entropy.view(shape)


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


def precision(hidden_size, vocab, n_tokens=64):
    """|log pi - log pi_float64| of the logits' matmul at three input precisions (TF32 and bf16 emulated:
    inputs rounded to 10 / 7 mantissa bits, products summed in float64, as their float32 accumulators
    nearly do). Hidden states N(0, 1), LM head N(0, 0.05^2): logits of std about 2, as trained LMs have."""
    torch.manual_seed(0)
    h, w = torch.randn(n_tokens, hidden_size), torch.randn(vocab, hidden_size) * 0.05
    targets = torch.randint(0, vocab, (n_tokens,))

    def round_mantissa(x, bits):  # round to nearest on the float32 bit pattern
        drop = 23 - bits
        return ((x.view(torch.int32) + (1 << (drop - 1))) & ~((1 << drop) - 1)).view(torch.float32)

    def logp(hh, ww):
        return torch.log_softmax((hh @ ww.T).double(), -1).gather(1, targets[:, None])[:, 0]

    ref = logp(h.double(), w.double())
    print(f"log pi against float64, H = {hidden_size}, V = {vocab}, {n_tokens} tokens")
    for name, hh, ww in [("float32 (IEEE: precision highest)", h, w),
                         ("TF32 inputs (emulated: high on GPUs)", round_mantissa(h, 10).double(),
                          round_mantissa(w, 10).double()),
                         ("bf16 inputs (emulated)", h.bfloat16().double(), w.bfloat16().double())]:
        err = (logp(hh, ww) - ref).abs()
        print(f"  {name:36} mean {err.mean():.1e}  max {err.max():.1e}")


def kernel_precision(hidden_size, vocab, n_tokens, repeats):
    """loss.token_logprobs at each loss.logprob_precision on this machine's device (CUDA when there is one):
    |log pi - log pi_float64| over the first 64 tokens, and the median seconds of forward + backward (a
    PPO-like weighted sum) over n_tokens. On a CPU the two precisions run the same float32 path."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    h = torch.randn(n_tokens, hidden_size, device=device).requires_grad_()
    w = (torch.randn(vocab, hidden_size, device=device) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (n_tokens,), device=device)
    coef = torch.randn(n_tokens, device=device)
    k = min(64, n_tokens)
    ref = torch.log_softmax(h[:k].detach().double().cpu() @ w.detach().double().cpu().T, -1).gather(
        1, targets[:k].cpu()[:, None])[:, 0]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(f"loss.token_logprobs on {device}, H = {hidden_size}, V = {vocab}: forward + backward of {n_tokens} "
          f"tokens (median of {repeats}); error over {k} tokens against float64")
    for precision in ("highest", "high"):
        with torch.no_grad():
            logp, _ = token_logprobs(h[:k], w, targets[:k], precision=precision)
        err = (logp.double().cpu() - ref).abs()
        seconds = []
        for _ in range(repeats + 1):  # the first run warms up (kernels, allocator) and is not counted
            h.grad = w.grad = None
            sync()
            t0 = time.perf_counter()
            logp, ent = token_logprobs(h, w, targets, precision=precision)
            (coef * logp).sum().backward()
            sync()
            seconds.append(time.perf_counter() - t0)
        seconds = seconds[1:]
        print(f"  {precision:8} ({'IEEE float32' if precision == 'highest' else 'TF32 on GPUs'}): |error| mean "
              f"{err.mean():.1e} max {err.max():.1e}; {statistics.median(seconds):.3f} s")


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
    p.add_argument("--precision", action="store_true",
                   help="only the precision: the logits' error against float64 at three input precisions "
                        "(emulated), then the kernel's error and time at each loss.logprob_precision "
                        "(H = the last --hidden, N = the first --tokens)")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.hidden[0], args.tokens[0], args.vocab, args.chunk_size)
    if args.precision:
        precision(args.hidden[-1], args.vocab)
        return kernel_precision(args.hidden[-1], args.vocab, args.tokens[0], args.repeats)

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
