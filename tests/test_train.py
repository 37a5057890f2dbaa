"""train.py end to end on the tiny model (CPU): every method config, torchrun equivalence, kill -9 resume."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from config import check_config, load_config
from distributed import latest_checkpoint
from tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["grpo", "drgrpo", "dapo", "lipo", "gspo", "daro", "grpo_hadw", "gspo_hadw", "dapo_hadw"]
TINY = ["model.path=tiny", "model.dtype=float32", "data.train=synthetic", "rollout.template=plain",
        "rollout.max_tokens=4", "reward.kind=first_char", "reward.workers=0", "eval.every=0"]


def records(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def finite(record):
    return all(v is None or isinstance(v, str) or math.isfinite(v) for v in record.values())


@pytest.mark.parametrize("method", METHODS)
def test_one_step_of_every_config(method, tmp_path):
    cfg = load_config(ROOT / "configs" / f"{method}.yaml", TINY + [
        f"out_dir={tmp_path}", "steps=1", "prompts_per_step=4", "G=4", "mini_batches=2", "micro_batch_size=5",
        "rollout.engine=hf", "optim.lr=1e-3", "optim.warmup_steps=1"])
    check_config(cfg)
    train.train(cfg)
    (rec,) = records(tmp_path)
    assert rec["step"] == 1 and finite(rec), rec
    from safetensors.torch import load_file
    before = load_file(tmp_path / "tiny_model" / "model.safetensors")
    after = load_file(tmp_path / "checkpoints" / "step_000001" / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if rec["groups"] == 0:  # dynamic sampling may keep no group of a random model: then nothing may move
        assert rec["empty_batch"] == 1 and not changed
        return
    assert changed, f"{method}: no parameter changed"
    if method == "daro":
        assert any(k.startswith("daro_w/") for k in rec)
    if method.endswith("hadw"):
        assert "hadw_belief" in rec


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """The same batch: one process vs torchrun on 2 gloo ranks with FSDP2, different micro-batching,
    2 mini-batches, LIPO (batch std) + HA-DW (batch accuracy). SGD lr 1: parameter change = -gradient."""
    model_dir = build_tiny_model(tmp_path / "model")
    overrides = ["prompts_per_step=6", "G=4", "mini_batches=2", "scheme.name=lipo", "scheme.hadw.enabled=true",
                 "optim.grad_clip=1e9", "rollout.max_tokens=8", "loss.kl_beta=0"]
    script = str(ROOT / "tests" / "dist_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, str(model_dir), str(tmp_path / "one.pt"), "micro_batch_size=5", *overrides],
                   check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                    script, str(model_dir), str(tmp_path / "two.pt"), "micro_batch_size=3", *overrides],
                   check=True, env=env, timeout=300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for k in ["loss", "pg_loss", "grad_norm", "entropy", "clip_low", "clip_high"]:
        assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-5, abs=1e-7), k
    scale = max(float(d.abs().max()) for d in one["delta"].values())
    assert scale > 1e-3  # the step moved the parameters
    for k in one["delta"]:
        torch.testing.assert_close(two["delta"][k], one["delta"][k], rtol=1e-4, atol=1e-5 * scale)


def run_cli(args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume_reproduces_metrics(tmp_path):
    common = ["--config", str(ROOT / "configs" / "tiny.yaml"), *TINY, "steps=6", "save_every=2", "prompts_per_step=8",
              "rollout.engine=vllm"]
    full = run_cli([*common, f"out_dir={tmp_path / 'full'}"])
    assert full.wait(timeout=600) == 0, full.stdout.read()
    # interrupted run: kill -9 once step 3 is logged (its step-2 checkpoint exists), then --resume
    run = tmp_path / "cut"
    proc = run_cli([*common, f"out_dir={run}"])
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(records(run)) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli([*common, f"out_dir={run}", "--resume"])
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    a, b = records(tmp_path / "full"), records(run)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    skip = lambda k: k.startswith("time/") or k == "tokens_per_s"
    for ra, rb in zip(a, b):
        kept_a, kept_b = ({k: v for k, v in r.items() if not skip(k)} for r in (ra, rb))
        assert kept_a == pytest.approx(kept_b, rel=1e-6, abs=1e-9), ra["step"]


def test_checkpoint_loads_in_transformers_and_vllm(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", TINY + [f"out_dir={tmp_path}", "steps=1", "prompts_per_step=4",
                                                                     "rollout.engine=hf"])
    train.train(cfg)
    ckpt = latest_checkpoint(tmp_path)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    from rollout import RolloutConfig, make_engine
    rollout_cfg = RolloutConfig(engine="vllm", template="plain", max_tokens=3, temperature=0.0)
    engine = make_engine(rollout_cfg, str(ckpt / "model"))
    try:
        (samples,) = engine.generate(["1+2="], 1)
    finally:
        engine.close()
    # greedy tokens of the engine equal transformers' argmax continuation of the same checkpoint
    ids = torch.tensor([samples[0].prompt_ids])
    greedy = model.generate(ids, max_new_tokens=len(samples[0].token_ids), do_sample=False)[0, ids.shape[1]:].tolist()
    assert greedy == samples[0].token_ids


@pytest.mark.parametrize("args,message", [
    (["scheme.nme=grpo"], "unknown config key 'scheme.nme'; did you mean 'name'"),
    (["G=1"], "config key 'G' must be >= 2"),
    (["data.train=/nonexistent/train.jsonl"], "/nonexistent/train.jsonl not found"),
    (["rollout.tensor_parallel_size=2"], "config key 'rollout.tensor_parallel_size' must be 1"),
])
def test_cli_errors_name_the_problem(args, message, tmp_path):
    proc = run_cli(["--config", str(ROOT / "configs" / "tiny.yaml"), f"out_dir={tmp_path}", "steps=1", *args])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and message in out, out


def test_overlong_penalty():
    # DAPO eq. 13 with L_max 20, L_cache 4: 0 up to 16, linear to -1 at 20, -1 beyond
    assert [train.overlong_penalty(n, 20, 4) for n in (10, 16, 17, 18, 20, 21)] == [0, 0, -0.25, -0.5, -1, -1]


def test_entropy_coef_changes_the_gradient_as_float64_says(tmp_path):
    """loss.entropy_coef reaches the gradient: the float32 pipeline (policy.per_token through the chunked
    kernel, then loss.policy_loss) against float64 autograd through the full logits, written out by hand."""
    from transformers import AutoModelForCausalLM
    from loss import LossConfig, policy_loss
    from policy import Policy, make_micro, per_token
    model_dir = build_tiny_model(tmp_path / "m")
    T, coef = 0.7, 2.0
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14, 15]]
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0]]
    A, W = torch.tensor([0.5, -1.0]), torch.tensor([0.1, 0.2])

    def pipeline(c):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        mb = make_micro(prompts, responses, mask, [0, 1], 0, torch.device("cpu"))
        logp, ent = per_token(Policy(model, T), mb, grad=True)
        loss, _ = policy_loss(logp, logp.detach(), mb.mask, A, W, LossConfig(entropy_coef=c), entropy=ent)
        loss.backward()
        return {n: p.grad.double() for n, p in model.named_parameters()}

    def reference(c):  # sum_i sum_t m W (-r A - c H), r = exp(logp - sg(logp)), float64
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
        loss = 0
        for b in range(2):
            p, n = len(prompts[b]), len(responses[b])
            logits = model(torch.tensor([prompts[b] + responses[b]])).logits[0, p - 1: p + n - 1] / T
            logq = torch.log_softmax(logits, -1)
            lp = logq.gather(1, torch.tensor(responses[b])[:, None])[:, 0]
            H = -(logq.exp() * logq).sum(-1)
            loss = loss + ((-torch.exp(lp - lp.detach()) * A[b] - c * H) * torch.tensor(mask[b]) * W[b]).sum()
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    g0, g1, r0, r1 = pipeline(0.0), pipeline(coef), reference(0.0), reference(coef)
    effect = max(float((r1[n] - r0[n]).abs().max()) for n in r0)
    assert effect > 0.05 * max(float(r0[n].abs().max()) for n in r0)  # the entropy term matters here
    for n in r0:
        torch.testing.assert_close(g1[n] - g0[n], r1[n] - r0[n], rtol=1e-4, atol=1e-5 * effect)
        torch.testing.assert_close(g1[n], r1[n], rtol=1e-4, atol=1e-5 * effect)
