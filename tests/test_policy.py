"""policy.py: packed rows (several prompt + response sequences per row, position ids restarting) and shared
prompts (a prompt, then its responses, under a block mask) give the log-probs, entropies and gradients of one
right-padded row per response (float32, tiny Qwen2)."""
import pytest
import torch

from policy import Policy, make_micro, pack_micro_batches, per_token, row_tokens
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


def test_shared_prompt_rows_equal_one_row_per_response(model):
    """share_prompt: [prompt, response_1, response_2, ...] under the block mask gives every response the
    log-probs, entropies and parameter gradients of its own [prompt + response] row; rows mix groups
    (two groups packed in one row) and carry padding."""
    policy = Policy(model, temperature=0.8)
    g = torch.Generator().manual_seed(3)
    prompts, outs = [], []
    for q in range(3):
        prompt = torch.randint(3, 90, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(3):
            prompts.append(prompt)
            outs.append(torch.randint(3, 90, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist())
    mask = [[1.0] * len(o) for o in outs]
    rows = [[0, 1, 2, 3, 4, 5], [6, 8]]  # groups 0 and 1 packed in one row; group 2 without its response 7
    shared = make_micro(prompts, outs, mask, rows, 0, torch.device("cpu"), share_prompt=True)
    plain = make_micro(prompts, outs, mask, [[i] for row in rows for i in row], 0, torch.device("cpu"))
    assert len(shared.blocks.q_index) == 3 + 8 and shared.input_ids.shape[1] == max(  # a block per prompt, response
        row_tokens(row, prompts, outs, share=True) for row in rows)
    assert sum(row_tokens(row, prompts, outs, share=True) for row in rows) == sum(map(len, outs)) - len(outs[7]) + sum(
        len(prompts[3 * q]) for q in range(3))  # each prompt once
    weights = torch.randn(*shared.mask.shape)
    results = []
    for mb in (shared, plain):
        model.zero_grad()
        logp, ent = per_token(policy, mb, grad=True)
        ((logp * weights + 0.1 * ent) * mb.mask).sum().backward()
        results.append((logp.detach(), ent.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)
    for k, grad in results[1][2].items():  # float32 sums in another order: tolerance relative to the largest
        torch.testing.assert_close(results[0][2][k], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))


def test_policy_runs_the_kernel_at_its_precision(model, monkeypatch):
    """Policy hands its precision (loss.logprob_precision) to the LM-head kernel, directly and through the
    diagnostics' KernelTimer."""
    import loss
    import policy as policy_module
    from policy import KernelTimer
    seen = []

    def kernel(*args, precision, **kwargs):
        seen.append(precision)
        return loss.token_logprobs(*args, precision=precision, **kwargs)

    monkeypatch.setattr(policy_module, "token_logprobs", kernel)
    prompts, outs, mask = responses(2, seed=5)
    mb = make_micro(prompts, outs, mask, [[0], [1]], 0, torch.device("cpu"))
    for precision in ("high", "highest"):
        policy = Policy(model, temperature=1.0, precision=precision)
        per_token(policy, mb, grad=False)
        policy.kernel_timer = KernelTimer("cpu")
        per_token(policy, mb, grad=False)
    assert seen == ["high", "high", "highest", "highest"]


def test_shared_prompt_blocks_by_hand():
    """The blocks of one row [p p | a a | b], written out: the prompt's own block, then each response's
    queries against the prompt's keys and its own, causal by position."""
    mb = make_micro([[5, 6], [5, 6]], [[7, 8], [9]], [[1.0, 1.0], [1.0]], [[0, 1]], 0, torch.device("cpu"),
                    share_prompt=True)
    assert mb.input_ids.tolist() == [[5, 6, 7, 8, 9]] and mb.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert mb.cols.tolist() == [1, 2, 1] and mb.targets.tolist() == [7, 8, 9]
    b = mb.blocks
    assert b.q_index.tolist() == [[0, 1], [2, 3], [4, 0]]
    assert b.q_dest.tolist() == [0, 1, 2, 3, 4, 5]  # the padded query's output goes to slot R * S = 5: dropped
    assert b.k_index.tolist() == [[0, 1, 0, 0], [0, 1, 2, 3], [0, 1, 4, 0]]
    assert b.mask[:, 0].int().tolist() == [[[1, 0, 0, 0], [1, 1, 0, 0]],
                                           [[1, 1, 1, 0], [1, 1, 1, 1]],
                                           [[1, 1, 1, 0], [1, 0, 0, 0]]]  # a padded query sees key 0 only


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_linear_matches_float64(bias):
    """OneDNNLinear (float32, oneDNN) against float64 F.linear: output and the three gradients, [B, T, K] input."""
    from policy import OneDNNLinear
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x, w, b = randn(3, 5, 40), randn(24, 40), randn(24) if bias else None
    upstream = randn(3, 5, 24)
    inputs = [t for t in (x, w, b) if t is not None]
    ref = torch.nn.functional.linear(*[t.requires_grad_() for t in inputs] + ([] if bias else [None]))
    ref_grads = torch.autograd.grad(ref, inputs, upstream)
    mine_in = [t.detach().float().requires_grad_() for t in inputs]
    out = OneDNNLinear.apply(*mine_in, *([] if bias else [None]))
    assert out.dtype == torch.float32 and out.grad_fn.name() == "OneDNNLinearBackward"
    grads = torch.autograd.grad(out, mine_in, upstream.float())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for mine, expected in zip(grads, ref_grads):
        torch.testing.assert_close(mine.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_onednn_linears_give_the_same_logprobs_and_gradients(tmp_path):
    """use_onednn_linears on a whole model (tiny Qwen2: q/k/v carry biases): every decoder linear goes through
    OneDNNLinear, and the policy's log-probs and parameter gradients equal those of torch's own linears."""
    from transformers import AutoModelForCausalLM

    from policy import use_onednn_linears
    path = build_tiny_model(tmp_path, seed=2)
    models = [AutoModelForCausalLM.from_pretrained(path) for _ in range(2)]
    use_onednn_linears(models[1])
    calls = []
    for module in models[1].model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, out: calls.append(out.grad_fn.name()))
    prompts, outs, mask = responses(6, seed=4)
    mb = make_micro(prompts, outs, mask, [[i] for i in range(6)], 0, torch.device("cpu"))
    results = []
    for model in models:
        logp, ent = per_token(Policy(model, temperature=0.9), mb, grad=True)
        (logp * mb.mask).sum().backward()
        results.append((logp.detach(), ent.detach(), {k: p.grad for k, p in model.named_parameters()}))
    n_linears = sum(isinstance(m, torch.nn.Linear) for m in models[1].model.layers.modules())
    assert calls == ["OneDNNLinearBackward"] * n_linears and n_linears > 0
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)
    for k, grad in results[0][2].items():
        torch.testing.assert_close(results[1][2][k], grad, rtol=1e-4, atol=1e-6)


def layer_calls_and_grads(model_dir, checkpointing, compile_layers=False):
    """Through load_policy (FSDP2 in a group of one, float32) and per_token: how often each decoder layer's
    forward ran in one forward + backward, counted by forward pre-hooks (they fire on the recompute too, and
    wherever model.compile or use_onednn_linears put the layer's forward), and the full parameter gradients."""
    from config import ModelConfig
    from distributed import init_distributed, shutdown_distributed
    from policy import load_policy
    device = init_distributed()
    policy = None
    try:
        cfg = ModelConfig(path=str(model_dir), gradient_checkpointing=checkpointing, compile=compile_layers)
        policy = load_policy(model_dir, cfg, temperature=0.9, device=device)
        calls = [0] * len(policy.model.model.layers)
        for i, layer in enumerate(policy.model.model.layers):
            layer.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
        prompts, outs, mask = responses(5, seed=7)
        mb = make_micro(prompts, outs, mask, [[i] for i in range(5)], 0, device)
        logp, ent = per_token(policy, mb, grad=True)
        ((logp * torch.linspace(-1, 1, logp.shape[1]) + 0.1 * ent) * mb.mask).sum().backward()
        grads = {k: p.grad.full_tensor().clone() for k, p in policy.named_parameters()}
        return calls, grads, all(m.training for m in policy.modules())
    finally:
        import gc
        del policy
        gc.collect()
        shutdown_distributed()


@pytest.mark.parametrize("compile_layers", [False, True])
def test_gradient_checkpointing_recomputes_each_layer_once(tmp_path, compile_layers):
    """model.gradient_checkpointing: each decoder layer's forward runs twice per forward + backward (the second
    time to recompute its activations for the backward), once without; the gradients are the same either way.
    load_policy must put the trainable policy in train mode: transformers' from_pretrained returns it in eval
    mode, where decoder layers never checkpoint (GradientCheckpointingLayer checks self.training)."""
    model_dir = build_tiny_model(tmp_path / "model", seed=3)
    on_calls, on_grads, on_training = layer_calls_and_grads(model_dir, True, compile_layers)
    off_calls, off_grads, _ = layer_calls_and_grads(model_dir, False, compile_layers)
    assert on_calls == [2, 2] and off_calls == [1, 1]
    assert on_training  # every module, the decoder layers included
    assert on_grads.keys() == off_grads.keys() and len(on_grads) > 0
    for k, grad in off_grads.items():
        assert float(grad.abs().max()) > 0 or "bias" in k, k
        torch.testing.assert_close(on_grads[k], grad, rtol=1e-5, atol=1e-7)
