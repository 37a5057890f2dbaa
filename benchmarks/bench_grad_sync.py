"""FSDP2 gradient reduce-scatters per optimiser step: after every micro-batch vs once per step (train.py's
grad_sync: micro_batch | step), on 2 gloo ranks of this CPU. Same model, batch and update in both modes.

    python benchmarks/bench_grad_sync.py [--micro-batches 8] [--steps 5] [--hidden 512] [--layers 4]

It starts itself under torchrun. Each rank shards a random-init Qwen2 as train.py does (fully_shard on
every decoder layer, then on the policy wrapper, float32), runs micro-batches of policy.py's per-token
log-probs through loss.policy_loss, and steps SGD. Counted: calls of FSDP's foreach_reduce (one per
parameter group and backward that reduces: the reduce-scatters), and wall time per optimiser step
(median over steps after the first). The parameters after the steps are compared across the two modes.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args):
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT))
    from distributed import init_distributed, world
    from loss import LossConfig, policy_loss
    from policy import Policy, make_micro, per_token

    calls = {"n": 0}
    original = _fsdp_param_group.foreach_reduce

    def counted(*a, **kw):
        calls["n"] += 1
        return original(*a, **kw)

    _fsdp_param_group.foreach_reduce = counted
    device = init_distributed()
    rank, world_size = world()
    results = {}
    for mode in ("micro_batch", "step"):
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=512, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                             num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                             num_key_value_heads=args.hidden // 64, head_dim=64, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(config)
        model.config.use_cache = False
        policy = Policy(model, temperature=1.0)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(policy)
        opt = torch.optim.SGD(policy.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(100 + rank)
        n = args.micro_batches * args.rows
        prompts = [torch.randint(3, 500, (64,), generator=g).tolist() for _ in range(n)]
        outs = [torch.randint(3, 500, (int(torch.randint(16, 192, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n)]
        A, W = torch.randn(n, generator=g), torch.full((n,), 1.0 / sum(len(o) for o in outs))
        times, counts = [], []
        for step in range(args.steps):
            calls["n"] = 0
            dist.barrier()
            t0 = time.perf_counter()
            for m in range(args.micro_batches):
                policy.set_requires_gradient_sync(mode == "micro_batch" or m == args.micro_batches - 1)
                rows = [[i] for i in range(m * args.rows, (m + 1) * args.rows)]
                mb = make_micro(prompts, outs, [[1.0] * len(o) for o in outs], rows, 0, device)
                logp, ent = per_token(policy, mb, grad=True)
                loss, _ = policy_loss(logp, logp.detach(), mb.mask, A[mb.index], W[mb.index], LossConfig())
                (loss * world_size).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            counts.append(calls["n"])
        state = {k: v.full_tensor() for k, v in policy.state_dict().items()}
        results[mode] = (statistics.median(times[1:]), counts[-1], state)
    if rank == 0:
        (t_micro, c_micro, s_micro), (t_step, c_step, s_step) = results["micro_batch"], results["step"]
        diff = max(float((s_micro[k] - s_step[k]).abs().max()) for k in s_micro)
        print(f"2 gloo ranks, Qwen2 hidden {args.hidden} x {args.layers} layers, {args.micro_batches} micro-batches "
              f"of {args.rows} responses per optimiser step, float32; load {os.getloadavg()[0]:.1f} at the end")
        print(f"{'grad_sync':12} {'reduce-scatters / step':>23} {'s / step':>9}")
        print(f"{'micro_batch':12} {c_micro:23d} {t_micro:9.3f}")
        print(f"{'step':12} {c_step:23d} {t_step:9.3f}")
        print(f"max |parameter difference| after {args.steps} steps: {diff:.2e}")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--micro-batches", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                    __file__, "--worker", *sys.argv[1:]], check=True, env=env)


if __name__ == "__main__":
    main()
