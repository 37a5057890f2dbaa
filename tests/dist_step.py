"""One train_on_batch on a fixed batch, in one process or under torchrun; saves the loss and the
parameter change. tests/test_train.py compares the two (SGD with lr 1: the change is minus the gradient)."""
import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from config import load_config  # noqa: E402
from distributed import full_model_state, init_distributed, world  # noqa: E402
from policy import load_policy  # noqa: E402
from weights import make_scheme  # noqa: E402


def fixed_batch(P, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for p in range(P):
        prompt = torch.randint(3, 90, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        for _ in range(G):
            prompts.append(prompt)
            responses.append(torch.randint(3, 90, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist())
    rewards = (torch.rand(P, G, generator=g) < 0.5).float()
    rewards[1] = 1.0  # a group of equal rewards: A = 0, skipped from the training pass by default
    return prompts, responses, rewards


def main(model_dir, out_path, overrides):
    device = init_distributed()  # the trainer's own setup: gloo under torchrun, one process otherwise
    cfg = load_config(None, overrides)
    policy = load_policy(model_dir, cfg.model, cfg.rollout.temperature, device)
    before = {k: v.clone() for k, v in full_model_state(policy.model).items()}
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scheme = make_scheme(cfg.scheme, G=cfg.G, max_len=cfg.rollout.max_tokens)
    tr = train.Trainer(cfg, policy, None, opt, sched, scheme, device, pad_id=0)
    prompts, responses, rewards = fixed_batch(cfg.prompts_per_step, cfg.G)
    rank, world_size = world()
    mine = list(range(rank, cfg.prompts_per_step, world_size))  # prompts are dealt out as collect_batch does
    take = [p * cfg.G + i for p in mine for i in range(cfg.G)]
    batch = train.Batch(prompt_ids=[prompts[t] for t in take], response_ids=[responses[t] for t in take],
                        loss_mask=[[1.0] * len(responses[t]) for t in take], rewards=rewards[mine],
                        correct=rewards[mine] > 0.5)
    metrics = train.train_on_batch(tr, batch)
    after = full_model_state(policy.model)
    if rank == 0:
        from torch._dynamo.utils import counters  # graphs torch.compile captured (model.compile)
        torch.save({"metrics": metrics, "delta": {k: after[k] - before[k] for k in after},
                    "compiled_graphs": counters["stats"]["unique_graphs"]}, out_path)
    if dist.is_initialized():
        del tr, policy, opt, sched  # free FSDP state before its process group (torch 2.13 gloo can abort at exit)
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
