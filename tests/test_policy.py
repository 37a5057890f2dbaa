"""policy.py: packed rows (several prompt + response sequences per row, position ids restarting) give the
log-probs, entropies and gradients of one right-padded row per response (float32, tiny Qwen2)."""
import pytest
import torch

from policy import Policy, make_micro, pack_micro_batches, per_token
from tiny import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=1))


def responses(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 90, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    outs = [torch.randint(3, 90, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]
    return prompts, outs, [[1.0] * len(o) for o in outs]


def test_packed_rows_equal_one_row_per_response(model):
    policy = Policy(model, temperature=0.8)
    prompts, outs, mask = responses(9)
    seq_lens = [len(p) + len(o) for p, o in zip(prompts, outs)]
    (rows,) = pack_micro_batches(list(range(9)), seq_lens, max_rows=64, max_tokens=10_000)
    assert len(rows) < 9 and any(len(row) > 1 for row in rows)  # really packed
    packed = make_micro(prompts, outs, mask, rows, 0, torch.device("cpu"))
    plain = make_micro(prompts, outs, mask, [[i] for i in range(9)], 0, torch.device("cpu"))
    assert packed.attention_mask is None and plain.position_ids is None
    order = packed.index.tolist()  # packed rows list responses longest first
    logp_a, ent_a = per_token(policy, packed, grad=True)
    logp_b, ent_b = per_token(policy, plain, grad=True)
    torch.testing.assert_close(logp_a, logp_b[order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_a, ent_b[order], rtol=1e-5, atol=1e-5)
    weights = torch.randn(9, logp_b.shape[1])
    grads = []
    for logp, perm in ((logp_a, order), (logp_b, list(range(9)))):
        model.zero_grad()
        (logp * weights[perm] * (packed.mask if perm is order else plain.mask)).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)
