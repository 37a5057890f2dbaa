"""(torchrun, 2 ranks) policy.load_policy, which reads the checkpoint on rank 0 only, against the load it replaced
(benchmarks/bench_memory.load_every_rank: every rank reads the whole model): every parameter's shard and full
tensor, every buffer (rotary inv_freq included), the config and the modes, bit for bit, for the trainable policy
and the KL reference; then one forward + backward of each: equal log-probs, entropies and gradients. Rank 0 writes
what differs to OUT_JSON (tests/test_memory.py reads it).

    torchrun --nproc_per_node 2 tests/dist_load.py MODEL_DIR OUT_JSON
"""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_memory import load_every_rank  # noqa: E402
from config import ModelConfig  # noqa: E402
from distributed import init_distributed, shutdown_distributed, world  # noqa: E402
from policy import load_policy  # noqa: E402


def differences(new, old):
    """What differs between two policies, by name."""
    bad = []
    pn, po = dict(new.named_parameters()), dict(old.named_parameters())
    bad += [f"parameter names {sorted(set(pn) ^ set(po))}"] if set(pn) != set(po) else []
    for name in sorted(set(pn) & set(po)):
        a, b = pn[name], po[name]
        if a.dtype != b.dtype or not torch.equal(a.to_local(), b.to_local()):
            bad.append(f"shard {name}")
        if not torch.equal(a.full_tensor(), b.full_tensor()):
            bad.append(f"full {name}")
        if a.requires_grad != b.requires_grad:
            bad.append(f"requires_grad {name}")
    bn, bo = dict(new.named_buffers()), dict(old.named_buffers())
    bad += [f"buffer {k}" for k in sorted(set(bn) | set(bo)) if k not in bn or k not in bo or not torch.equal(bn[k], bo[k])]
    if new.model.config.to_dict() != old.model.config.to_dict():
        bad.append("config")
    tied = lambda p: p.model.lm_head.weight is p.model.model.embed_tokens.weight  # noqa: E731
    if tied(new) != tied(old):
        bad.append("the head's tie")
    modes = lambda p: [(n, m.training, getattr(m, "gradient_checkpointing", None)) for n, m in p.named_modules()]  # noqa: E731
    if modes(new) != modes(old):
        bad.append("train mode / gradient checkpointing flags")
    return bad


def forward_backward(policy, vocab):
    """log-probs and entropies of a fixed batch, and the full gradients they give."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 24), generator=g)
    rows, cols = torch.arange(2).repeat_interleave(23), torch.arange(23).repeat(2)
    targets = ids[:, 1:].reshape(-1)
    logp, ent = policy(ids, torch.ones_like(ids), None, rows, cols, targets)
    if not any(p.requires_grad for p in policy.parameters()):
        return logp.detach(), ent.detach(), {}
    (logp.sum() + 0.1 * ent.sum()).backward()
    return logp.detach(), ent.detach(), {n: p.grad.full_tensor() for n, p in policy.named_parameters()}


def main():
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    device = init_distributed()
    report = {}
    try:
        for trainable in (True, False):
            cfg = ModelConfig(path=model_dir, dtype="float32", gradient_checkpointing=trainable, onednn_linears=False)
            new = load_policy(model_dir, cfg, 1.0, device, trainable=trainable)
            old = load_every_rank(model_dir, cfg, 1.0, device, trainable=trainable)
            bad = differences(new, old)
            a, b = (forward_backward(p, new.model.config.vocab_size) for p in (new, old))
            bad += [] if torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) else ["log-probs"]
            bad += [f"gradient {n}" for n in a[2] if not torch.equal(a[2][n], b[2][n])]
            report["policy" if trainable else "reference"] = {"differ": bad, "parameters": len(a[2]) or None}
        if world()[0] == 0:
            out.write_text(json.dumps(report))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
