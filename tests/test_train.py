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
TINY = ["model.dtype=float32", "data.train=synthetic", "rollout.template=plain",
        "rollout.max_tokens=4", "reward.kind=first_char", "reward.workers=0", "eval.every=0"]


def records(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def finite(record):
    return all(v is None or isinstance(v, str) or math.isfinite(v) for v in record.values())


@pytest.mark.parametrize("method", METHODS)
def test_one_step_of_every_config(method, tmp_path, tiny_model):
    cfg = load_config(ROOT / "configs" / f"{method}.yaml", TINY + [
        f"model.path={tiny_model}", f"out_dir={tmp_path}", "steps=1", "prompts_per_step=4", "G=4", "mini_batches=2", "micro_batch_size=5",
        "rollout.engine=hf", "optim.lr=1e-3", "optim.warmup_steps=1"])
    check_config(cfg)
    train.train(cfg)
    (rec,) = records(tmp_path)
    assert rec["step"] == 1 and finite(rec), rec
    from safetensors.torch import load_file
    before = load_file(tiny_model / "model.safetensors")
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


def test_logged_lr_is_the_rate_each_step_used(tmp_path, tiny_model):
    """Warm-up over 2 steps of lr 1e-3, then cosine over the 2 steps left: step k (1-based) trains at
    lr * f(k - 1) with f(0) = 1/2, f(1) = 1 (warm-up), f(2) = (1 + cos 0) / 2 = 1, f(3) = (1 + cos(pi/2)) / 2
    = 1/2 (written out by hand, not from config.py); the record of step k holds that rate, not the next."""
    cfg = load_config(ROOT / "configs" / "grpo.yaml", TINY + [
        f"model.path={tiny_model}", f"out_dir={tmp_path}", "steps=4", "prompts_per_step=2", "G=4",
        "rollout.engine=hf", "optim.lr=1e-3", "optim.warmup_steps=2", "optim.schedule=cosine", "save_every=0"])
    train.train(cfg)
    assert [r["lr"] for r in records(tmp_path)] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4], abs=1e-12)


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """The same batch: one process (all responses trained, micro-batches of 5) vs torchrun on 2 gloo ranks
    with FSDP2 and other splits: runs of 3 with one gradient reduce-scatter per optimiser step, and
    length-sorted micro-batches under a token budget with a reduce-scatter after every micro-batch, and
    shared prompts (a group's responses after one copy of its prompt), those again with torch.compile'd decoder
    layers (inductor kernels, micro-batches of two shapes); all skip the zero-advantage group.
    2 mini-batches, LIPO (batch std) + HA-DW (batch accuracy).
    SGD lr 1: the parameter change is minus the gradient."""
    model_dir = build_tiny_model(tmp_path / "model")
    overrides = ["prompts_per_step=6", "G=4", "mini_batches=2", "scheme.name=lipo", "scheme.hadw.enabled=true",
                 "optim.grad_clip=1e9", "rollout.max_tokens=8", "loss.kl_beta=0"]
    script = str(ROOT / "tests" / "dist_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, split in {"one.pt": ["micro_batch_size=5"], "all.pt": ["skip_zero_advantage=false"]}.items():
        subprocess.run([sys.executable, script, str(model_dir), str(tmp_path / name), *split, *overrides],
                       check=True, env=env, timeout=300)
    runs = {"two.pt": ["micro_batch_size=3", "grad_sync=step"],
            "budget.pt": ["micro_batch_tokens=24", "grad_sync=micro_batch"],
            "shared.pt": ["share_prompt=true", "micro_batch_tokens=40", "grad_sync=step"],
            "compiled.pt": ["share_prompt=true", "micro_batch_tokens=40", "grad_sync=step", "model.compile=true"]}
    for name, split in runs.items():
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29533", script, str(model_dir), str(tmp_path / name), *split, *overrides],
                       check=True, env=env, timeout=300)
    one = torch.load(tmp_path / "one.pt")
    scale = max(float(d.abs().max()) for d in one["delta"].values())
    assert scale > 1e-3  # the step moved the parameters
    from dist_step import fixed_batch
    rewards = fixed_batch(6, 4)[2]
    equal_groups = int((rewards.max(1).values == rewards.min(1).values).sum())
    assert equal_groups >= 1 and one["metrics"]["skipped_frac"] == pytest.approx(equal_groups / 6)
    for name in [*runs, "all.pt"]:
        two = torch.load(tmp_path / name)
        assert (two["compiled_graphs"] > 0) == (name == "compiled.pt"), (name, two["compiled_graphs"])
        same = ["loss", "pg_loss", "grad_norm"] + (["clip_low", "clip_high", "skipped_frac"] if name in runs else [])
        for k in same:  # clip fractions are means over the trained tokens: equal where the same are trained
            assert two["metrics"][k] == pytest.approx(one["metrics"][k], rel=1e-5, abs=1e-7), (name, k)
        for k in one["delta"]:
            torch.testing.assert_close(two["delta"][k], one["delta"][k], rtol=1e-4, atol=1e-5 * scale)


def plan_of(cfg, prompts, responses, mini, trained, policy=None, ref_policy=None):
    """train.micro_batches on a batch of these token lists (A, W, W_reg: the response's index); the policies
    are needed only where the config wants log pi_old (several mini-batches or epochs) or log pi_ref (a KL)."""
    from types import SimpleNamespace
    index = torch.arange(len(responses), dtype=torch.float32)
    batch = SimpleNamespace(prompt_ids=prompts, response_ids=responses, loss_mask=[[1.0] * len(r) for r in responses])
    weighting = train.Weighting(A=index, W=index + 100, W_reg=index + 200, position=[], mini=mini, n_groups=0)
    tr = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), pad_id=0, policy=policy, ref_policy=ref_policy)
    return train.micro_batches(tr, batch, weighting, trained)


def test_token_budget_plan_packs_responses_under_the_budget():
    cfg = load_config(None, ["G=4", "micro_batch_tokens=100", "micro_batch_size=3"])
    g = torch.Generator().manual_seed(0)
    seq_lens = [int(x) for x in torch.randint(2, 12, (16,), generator=g)] + [35, 50]  # a heavy tail
    seq_lens += [3, 4]
    trained = [True] * 20
    trained[5] = False
    mini = [[0, 1], [2, 3, 4]]  # local groups of two mini-batches
    prompts, responses = [[7]] * 20, [[9] * (n - 1) for n in seq_lens]  # a row of one: prompt + response
    plan = plan_of(cfg, prompts, responses, mini, trained)
    for local, micros in zip(mini, plan):
        flat = [i for mb in micros for i in mb.tokens.index.tolist()]
        assert sorted(flat) == [q * 4 + i for q in local for i in range(4) if trained[q * 4 + i]]
        width = max(seq_lens[i] for i in flat)  # rows are as wide as the mini-batch's longest response
        for mb in micros:
            assert not mb.tokens.dummy and mb.tokens.input_ids.shape[1] <= width
            assert len(mb.tokens.input_ids) <= 3 and mb.tokens.input_ids.numel() <= max(100, width)
            assert mb.A.tolist() == mb.tokens.index.float().tolist() and (mb.W - mb.A).eq(100).all()  # each its own
            assert (mb.W_reg - mb.A).eq(200).all()
            assert mb.old_logp is None and mb.ref_logp is None  # one mini-batch in cfg, no KL: neither needed
    assert sum(mb.tokens.real_tokens for mini_ in plan for mb in mini_) == sum(seq_lens) - seq_lens[5]
    runs = plan_of(load_config(None, ["G=4", "micro_batch_size=3"]), prompts, responses, mini, trained)
    assert all(mb.tokens.position_ids is None for micros in runs for mb in micros)  # one response per row, padded
    computed = [sum(mb.tokens.input_ids.numel() for m in p for mb in m) for p in (runs, plan)]
    assert computed[0] > computed[1]


def test_plan_pads_with_dummies_and_a_mini_batch_of_nothing_trained():
    """A mini-batch whose responses are all left out still gets one pass (a dummy of zero weight), so that
    every optimiser step has a backward; the dummy carries no response."""
    cfg = load_config(None, ["G=2", "micro_batch_size=8"])
    plan = plan_of(cfg, [[5]] * 4, [[6, 7]] * 4, [[0], [1]], [True, True, False, False])
    assert [len(m) for m in plan] == [1, 1]
    (real,), (dummy,) = plan
    assert not real.tokens.dummy and real.tokens.index.tolist() == [0, 1] and real.tokens.real_tokens == 6
    assert dummy.tokens.dummy and dummy.tokens.index.numel() == 0 and dummy.tokens.mask.sum() == 0
    assert dummy.tokens.real_tokens == 0 and dummy.W.abs().sum() == 0 and dummy.A.abs().sum() == 0


def test_weigh_returns_A_W_and_the_mini_batches_it_computed():
    """GRPO over 3 groups of G = 2 in 2 mini-batches (groups [0] and [1, 2]), one process, written out by hand:
    A = (r - mean) / (unbiased std + eps): +-0.5 / sqrt(0.5) where a group's rewards differ, 0 where equal;
    W = 1 / (|o_i| G P_mini); W_reg = 1 / (tokens in the mini-batch), or W with loss.reg_weight "scheme".
    The batch is left as collect_batch built it. No group on any rank: n_groups 0 and nothing to train."""
    from weights import make_scheme
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    lengths = [2, 3, 1, 1, 4, 2]
    batch = train.Batch(prompt_ids=[[5]] * 6, response_ids=[[6] * n for n in lengths],
                        loss_mask=[[1.0] * n for n in lengths], rewards=rewards, correct=rewards > 0.5)
    cfg = load_config(None, ["G=2", "mini_batches=2"])
    w = train.weigh(cfg, make_scheme(cfg.scheme, G=2, max_len=8), batch)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(w.A, torch.tensor([a, -a, 0.0, 0.0, -a, a]))
    torch.testing.assert_close(w.W, torch.tensor([1 / 4, 1 / 6, 1 / 4, 1 / 4, 1 / 16, 1 / 8]))
    torch.testing.assert_close(w.W_reg, torch.tensor([1 / 5] * 2 + [1 / 8] * 4))
    assert w.position == [0, 1, 2] and w.mini == [[0], [1, 2]] and w.n_groups == 3
    assert not hasattr(batch, "A") and not hasattr(batch, "mini")
    cfg = load_config(None, ["G=2", "mini_batches=2", "loss.reg_weight=scheme"])
    assert torch.equal(train.weigh(cfg, make_scheme(cfg.scheme, G=2, max_len=8), batch).W_reg, w.W)
    empty = train.Batch(prompt_ids=[], response_ids=[], loss_mask=[], rewards=torch.zeros(0, 2),
                        correct=torch.zeros(0, 2, dtype=torch.bool))
    none = train.weigh(cfg, make_scheme(cfg.scheme, G=2, max_len=8), empty)
    assert none.n_groups == 0 and none.A.numel() == 0 and none.mini == [[], []]


def test_micro_batches_carry_old_and_reference_logprobs_when_built(tmp_path):
    """A micro-batch is complete when built: with two mini-batches (the policy moves within the step) and a KL
    term, each carries log pi_old of the policy and log pi_ref of the reference model, taken before any update:
    log_softmax of each model's full float64 logits on prompt + response at the response tokens (written out
    here), 0 past each response's end."""
    from transformers import AutoModelForCausalLM
    from policy import Policy
    T = 0.8
    dirs = [build_tiny_model(tmp_path / name, seed=seed) for name, seed in (("policy", 0), ("ref", 1))]
    load = lambda d, dtype: AutoModelForCausalLM.from_pretrained(d, dtype=dtype)  # noqa: E731
    prompts = [[5, 6, 7]] * 2 + [[8, 9]] * 2
    responses = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]

    def naive(model, i):  # float64, the whole vocabulary
        p, o = prompts[i], responses[i]
        with torch.no_grad():
            logits = model(torch.tensor([p + o])).logits[0, len(p) - 1: len(p) + len(o) - 1] / T
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(o)[:, None])[:, 0]

    want = {name: [naive(load(d, torch.float64), i) for i in range(4)] for name, d in zip(("old", "ref"), dirs)}
    cfg = load_config(None, ["G=2", "mini_batches=2", "loss.kl_beta=0.1", "micro_batch_size=1"])
    plan = plan_of(cfg, prompts, responses, [[0], [1]], [True] * 4, *(Policy(load(d, torch.float32), T) for d in dirs))
    assert [len(m) for m in plan] == [2, 2]
    seen = []
    for mb in (mb for m in plan for mb in m):
        for b, i in enumerate(mb.tokens.index.tolist()):
            n = len(responses[i])
            for name, got in (("old", mb.old_logp), ("ref", mb.ref_logp)):
                torch.testing.assert_close(got[b, :n].double(), want[name][i], rtol=1e-5, atol=1e-5)
                assert got[b, n:].eq(0).all() and not got.requires_grad
            seen.append(i)
    assert sorted(seen) == [0, 1, 2, 3]
    assert not torch.allclose(want["old"][0], want["ref"][0], atol=1e-3)  # two different models


def test_shared_prompt_plan_keeps_each_group_in_one_row():
    """share_prompt: a row holds whole groups (their trained responses side by side, the prompt once);
    the stats count the prompt once per group."""
    from policy import row_tokens
    cfg = load_config(None, ["G=4", "micro_batch_tokens=60", "micro_batch_size=8", "share_prompt=true"])
    prompts = [p for q in range(5) for p in [list(range(3, 3 + 2 + q))] * 4]  # group q's prompt: 2 + q tokens
    lengths = [8, 8, 7, 8, 1, 2, 1, 1, 3, 1, 5, 2, 6, 7, 1, 2, 1, 1, 1, 3]  # group widths 26, 8, 15, 15, 12
    outs = [list(range(n)) for n in lengths]
    trained = [True] * 20
    trained[2] = trained[13] = False
    plan = [[mb.tokens for mb in m] for m in plan_of(cfg, prompts, outs, [[0, 1, 2], [3, 4]], trained)]
    assert sorted(i for m in plan for mb in m for i in mb.index.tolist()) == [i for i in range(20) if trained[i]]
    # a row of a micro-batch holds the responses whose predicting columns sit in it (row ids of its tokens)
    groups = [{int(mb.index[b]) // 4 for b in mb.b_idx[mb.rows == r].unique().tolist()}
              for m in plan for mb in m for r in range(len(mb.input_ids))]
    assert sum(len(gs) for gs in groups) == 5  # no group split over rows
    assert any(len(gs) > 1 for gs in groups)  # and rows packed with several groups
    real = sum(mb.real_tokens for m in plan for mb in m)
    assert real == sum(2 + q for q in range(5)) + sum(len(outs[i]) for i in range(20) if trained[i])
    assert real == sum(row_tokens([i for i in range(20) if trained[i] and i // 4 == q], prompts, outs, share=True)
                       for q in range(5))


def run_cli(args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume_reproduces_metrics(tmp_path, tiny_model):
    common = ["--config", str(ROOT / "configs/experiments/tiny.yaml"), *TINY, f"model.path={tiny_model}", "steps=6", "save_every=2", "prompts_per_step=8",
              "data.level_sampling=learnability",  # the curriculum's counts and draws resume too
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


@pytest.mark.parametrize("fails", ["dcp", "model"])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_one(fails, tmp_path, tiny_model, monkeypatch):
    """A full disk mid-checkpoint (seen as torch's "unexpected pos" in DCP's shard writes, or as ENOSPC in
    rank 0's model files): one CheckpointError line naming the free space, `latest` still the previous
    checkpoint, no partial directory left, and --resume goes on from it."""
    cfg = lambda steps: load_config(ROOT / "configs/experiments/tiny.yaml", TINY + [
        f"model.path={tiny_model}", f"out_dir={tmp_path}", f"steps={steps}", "prompts_per_step=2", "G=4",
        "save_every=1", "rollout.engine=hf"])
    train.train(cfg(1))
    with monkeypatch.context() as m:
        if fails == "dcp":
            def full_disk(obj, f, *a, **kw):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            m.setattr(torch, "save", full_disk)
        else:
            def full_disk(self, *a, **kw):
                raise OSError(28, "No space left on device")
            from transformers import PreTrainedModel
            m.setattr(PreTrainedModel, "save_pretrained", full_disk)
        with pytest.raises(train.CheckpointError) as err:
            train.train(cfg(2), resume=True)
    message = str(err.value)
    assert "\n" not in message and "GiB free on its disk" in message and ".tmp_step_000002" in message
    assert ("unexpected pos 704 vs 598" if fails == "dcp" else "No space left on device") in message
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))
    train.train(cfg(2), resume=True)
    assert latest_checkpoint(tmp_path).name == "step_000002" and [r["step"] for r in records(tmp_path)] == [1, 2]


def test_checkpoint_loads_in_transformers_and_vllm(tmp_path, tiny_model):
    cfg = load_config(ROOT / "configs/experiments/tiny.yaml", TINY + [f"model.path={tiny_model}", f"out_dir={tmp_path}", "steps=1", "prompts_per_step=4",
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
    (["data.train=/nonexistent/train.jsonl"], "error: data.train: benchmark file /nonexistent/train.jsonl not found"),
    (["rollout.tensor_parallel_size=2"], "config key 'rollout.tensor_parallel_size' must be 1"),
    (["scheme.name=grpoo"], "config key 'scheme.name' must be one of grpo, drgrpo, dapo, lipo, daro"),
    (["eval.every=1", "eval.benchmarks=[/nonexistent/val.jsonl]"],
     "error: eval.benchmarks: benchmark file /nonexistent/val.jsonl not found"),
    (["model.path=/nonexistent/model"], "error: model.path '/nonexistent/model' is not a local model directory"),
])
def test_cli_errors_name_the_problem(args, message, tmp_path, tiny_model):
    """A user's mistake stops the run with one line that names it: no traceback."""
    proc = run_cli(["--config", str(ROOT / "configs/experiments/tiny.yaml"), f"out_dir={tmp_path}", "steps=1",
                    f"model.path={tiny_model}", f"eval.benchmarks=[{tiny_model}/synthetic.jsonl]", *args])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and message in out, out
    assert "Traceback" not in out, out


def test_overlong_penalty():
    # DAPO eq. 13 with L_max 20, L_cache 4: 0 up to 16, linear to -1 at 20, -1 beyond
    assert [train.overlong_penalty(n, 20, 4) for n in (10, 16, 17, 18, 20, 21)] == [0, 0, -0.25, -0.5, -1, -1]


class ScriptedEngine:
    """generate() returns fixed texts per prompt (the first character is the answer for first_char); each
    token's log-prob is -0.1 x its response's length, or None when log-probs are not asked for."""

    max_model_len = None

    def __init__(self, texts):
        self.texts = texts

    @staticmethod
    def tokenizer(text, add_special_tokens=True):  # one id per character
        return {"input_ids": [3] * len(text)}

    def generate(self, prompts, n, seed=None, logprobs=True):
        from rollout import Sample
        return [[Sample(prompt_ids=[3], token_ids=[5] * len(t), text=t, length=len(t), truncated=False,
                        logprobs=[-0.1 * len(t)] * len(t) if logprobs else None) for t in self.texts[p]]
                for p in prompts]


def test_dynamic_sampling_filters_on_verdicts_and_accuracy_counts_everything(tmp_path):
    """DAPO + overlong shaping: a group of correct answers, some overlong, has unequal rewards but mu = 1:
    it is dropped. HA-DW's y_t counts every sampled response before the filter, in both units (accuracy and
    mean shaped reward)."""
    from data import PromptStream
    cfg = load_config(ROOT / "configs" / "dapo.yaml", TINY + ["G=4", "prompts_per_step=2", "rollout.max_tokens=6",
                                                              "reward.overlong_buffer=2",
                                                              "reward.max_num_gen_batches=1"])
    rows = [{"id": "a", "problem": "p0", "answer": "5"}, {"id": "b", "problem": "p1", "answer": "7"}]
    engine = ScriptedEngine({"p0": ["5", "5xxxxx", "5", "5xxxx"],   # all correct; lengths 6 and 5 are shaped
                             "p1": ["7", "1", "7x", "2"]})            # 2 of 4 correct
    timers = {"rollout": 0.0, "verify": 0.0}
    batch = train.collect_batch(cfg, engine, PromptStream(rows, 0, False), 0, timers)
    info = batch.info
    assert [r["id"] for r in batch.rows] == ["b"] and len(batch.response_ids) == 4
    assert batch.correct.tolist() == [[True, False, True, False]] and batch.accuracy == info["accuracy"]
    assert info["accuracy"] == pytest.approx(6 / 8)  # before filtering: 4 + 2 correct of 8
    # y_t in reward units, over the same 8 responses: p0 1 + 0 + 1 + 0.5 (shaped), p1 1 + 0 + 1 + 0
    assert batch.reward_mean == pytest.approx(4.5 / 8)
    assert info["dynamic_sampling_gave_up"] == 1.0  # one round allowed, one group of two kept
    # the dropped group's rewards differed (overlong shaping: 6 tokens -> -1, 5 -> -0.5), its verdicts did not
    assert train.overlong_penalty(6, 6, 2) == -1.0 and train.overlong_penalty(5, 6, 2) == -0.5
    # gen/entropy: -log pi(y_t) over every sampled token, the dropped group's too. Lengths 1, 6, 1, 5 and 1, 1, 2,
    # 1 (18 tokens), each token at -0.1 x its length: 0.1 (1 + 36 + 1 + 25 + 1 + 1 + 4 + 1) / 18 = 7 / 18
    assert info["entropy"] == pytest.approx(7 / 18)


def test_gen_entropy_is_absent_when_the_engine_returns_no_logprobs():
    """HF generate is not asked for log-probs (it would keep every step's logits): no gen/entropy, not 0."""
    from data import PromptStream
    cfg = load_config(ROOT / "configs" / "grpo.yaml", TINY + ["G=2", "prompts_per_step=1", "rollout.engine=hf"])
    engine = ScriptedEngine({"p": ["5", "6"]})
    batch = train.collect_batch(cfg, engine, PromptStream([{"id": "a", "problem": "p", "answer": "5"}], 0, False),
                                0, {"rollout": 0.0, "verify": 0.0})
    assert "entropy" not in batch.info and batch.info["accuracy"] == 0.5


def test_level_curriculum_counts_every_verdict_before_dynamic_sampling():
    """collect_batch tells a LevelCurriculum each drawn level's correct and sampled responses, the groups
    that dynamic sampling drops included (their level gave no signal: that is what the curriculum learns)."""
    from data import LevelCurriculum
    cfg = load_config(ROOT / "configs" / "dapo.yaml", TINY + ["G=4", "prompts_per_step=4",
                                                              "reward.max_num_gen_batches=1"])
    rows = [{"id": "a", "problem": "p0", "answer": "5", "level": 1}, {"id": "b", "problem": "p1", "answer": "7",
                                                                     "level": 2}]
    engine = ScriptedEngine({"p0": ["5", "5", "5", "5"], "p1": ["7", "1", "7", "2"]})  # 4 and 2 of 4 correct
    stream, twin = (LevelCurriculum(rows, seed=1, shuffle=False, memory=0.0) for _ in range(2))
    drawn = [r["level"] for r in twin.take(4)]
    assert set(drawn) == {1, 2}  # this seed draws both levels
    batch = train.collect_batch(cfg, engine, stream, 0, {"rollout": 0.0, "verify": 0.0})
    assert [r["level"] for r in batch.rows] == [2] * drawn.count(2)  # the level-1 groups (4 of 4) dropped
    assert stream.correct.tolist() == [4 * drawn.count(1), 2 * drawn.count(2)]
    assert stream.sampled.tolist() == [4 * drawn.count(1), 4 * drawn.count(2)]

def test_evaluation_sharded_over_two_ranks_equals_one_process(tmp_path):
    """Each rank generates half of the validation problems and the verdicts are gathered: the accuracy
    equals one process's (a scripted engine answers each prompt deterministically)."""
    overrides = ["reward.kind=first_char", "reward.workers=0"]
    script, env = str(ROOT / "tests" / "dist_eval.py"), {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, str(tmp_path / "one.json"), *overrides], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                    script, str(tmp_path / "two.json"), *overrides], check=True, env=env, timeout=300)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert one["generated"] == [101] and two["generated"] == [51, 50]
    assert 0 < one["metrics"]["val/synthetic"] < 1
    assert two["metrics"]["val/synthetic"] == pytest.approx(one["metrics"]["val/synthetic"], abs=1e-12)


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
        mb = make_micro(prompts, responses, mask, [[0], [1]], 0, torch.device("cpu"))
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


def test_a_new_stateful_scheme_trains_through_the_step(tmp_path):
    """A scheme with state of its own, defined here as a forker would in weights.py (a subclass, nothing else
    touched): the step hands its update every response's statistics in the global order, and its state
    (here: a factor on W that halves each step) shapes the next step's loss. On-policy (ratio 1) a trained
    response's surrogate is -A_i |o_i| (its tokens), an untrained one's 0."""
    from dist_step import fixed_batch
    from distributed import init_distributed, shutdown_distributed
    from weights import GRPO

    class HalvingGRPO(GRPO):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.factor, self.seen = 1.0, []

        def weights(self, rewards, lengths, correct=None):
            return super().weights(rewards, lengths, correct) * self.factor

        def update(self, stats):
            super().update(stats)
            self.seen.append(stats)
            self.factor *= 0.5

    model_dir = str(build_tiny_model(tmp_path / "model"))  # all printable characters: fixed_batch's ids fit
    cfg = load_config(None, TINY + [f"model.path={model_dir}", "prompts_per_step=4", "G=4", "optim.lr=0.0",
                                    "optim.warmup_steps=1"])
    device = init_distributed()
    try:
        tr, _ = train.build_trainer(cfg, model_dir, model_dir, device)
        tr.scheme = HalvingGRPO(cfg.scheme, G=4, max_len=8)
        prompts, responses, rewards = fixed_batch(4, 4)
        losses = []
        for _ in range(2):
            batch = train.Batch(prompt_ids=prompts, response_ids=responses, loss_mask=[[1.0] * len(r) for r in responses],
                                rewards=rewards, correct=rewards > 0.5)
            losses.append(train.train_on_batch(tr, batch)["pg_loss"])
    finally:
        shutdown_distributed()
    first = tr.scheme.seen[0]
    A = tr.scheme.advantages(rewards).double()
    lengths = torch.tensor([[len(responses[p * 4 + i]) for i in range(4)] for p in range(4)], dtype=torch.float64)
    torch.testing.assert_close(first.surrogate, -A * lengths, rtol=1e-5, atol=1e-6)  # zero-A groups: skipped, 0
    torch.testing.assert_close(first.W, GRPO(cfg.scheme, G=4, max_len=8).weights(rewards, lengths.float()).double())
    assert tr.scheme.factor == 0.25 and losses[1] == pytest.approx(losses[0] / 2, rel=1e-5)


def test_per_request_sampling_seeds_on_gpus_only():
    """GPUs: every prompt's request carries a seed, and through vLLM's rule for n samples (the installed
    vLLM's ParentRequest gives sample j the seed + j) every sample of every prompt, rank and step draws from
    its own seed; a resumed run (a fresh engine, its call counter at 0) gets the same ones, since the trainer
    passes seed = hash_seed(run seed, step, round, rank). CPUs: no request carries a seed (the CPU build
    crashes on them under chunked prefill)."""
    from types import SimpleNamespace

    ParentRequest = pytest.importorskip("vllm.v1.engine.parallel_sampling").ParentRequest
    from rollout import SAMPLE_BITS, RolloutConfig, _begin_call, vllm_sampling_params

    def engine(calls):  # what _begin_call reads of an engine; a tokenizer of one id per character
        tokenizer = lambda text, add_special_tokens: {"input_ids": [ord(c) for c in text]}  # noqa: E731
        return SimpleNamespace(cfg=RolloutConfig(template="plain"), tokenizer=tokenizer, max_model_len=64,
                               calls=calls, seed=99)

    def sample_seeds(calls, seed, on_gpu, prompts=("1+1=", "2+2=", "3+3=")):
        c = _begin_call(engine(calls), list(prompts), 8, 1.0, 1.0, 16, seed)
        params = vllm_sampling_params(c, engine(0).cfg, 64, logprobs=False, on_gpu=on_gpu)
        seeds = []
        for sp in params:
            parent = ParentRequest.__new__(ParentRequest)  # only the child-seed rule, without a request
            parent.sampling_params, parent.cached_child_sampling_params = sp, None
            seeds.append([parent._get_child_sampling_params(j).seed for j in range(sp.n)])
        return seeds

    seeds = {(run, step, rank): sample_seeds(0, train.hash_seed(run, step, 0, rank), True)
             for run in (0, 1) for step in range(3) for rank in range(4)}
    flat = [s for per_prompt in seeds.values() for samples in per_prompt for s in samples]
    assert len(flat) == 2 * 3 * 4 * 3 * 8 and len(set(flat)) == len(flat)  # distinct over runs, steps, ranks,
    assert all(0 <= s < 2 ** 63 for s in flat)                               # prompts and samples
    assert all(samples[0] % 2 ** SAMPLE_BITS == 0 for per_prompt in seeds.values() for samples in per_prompt)
    assert sample_seeds(17, train.hash_seed(0, 2, 0, 1), True) == seeds[(0, 2, 1)]  # resumed: same seeds
    assert sample_seeds(0, train.hash_seed(0, 2, 1, 1), True) != seeds[(0, 2, 1)]   # next dynamic-sampling round
    # the same prompt text at another position in the call is another request: another seed
    assert sample_seeds(0, 5, True, ("1+1=", "1+1="))[0] != sample_seeds(0, 5, True, ("1+1=", "1+1="))[1]
    # an engine's own counter (no seed passed) moves the seeds from call to call
    assert sample_seeds(0, None, True) != sample_seeds(1, None, True)
    assert sample_seeds(0, 5, False) == [[None] * 8] * 3
    # everything but the seed is the same on both devices
    c = _begin_call(engine(0), ["1+1="], 4, 0.7, 0.9, 16, 3)
    gpu, cpu = (vllm_sampling_params(c, engine(0).cfg, 64, logprobs=True, on_gpu=d)[0] for d in (True, False))
    fields = lambda sp: {f: getattr(sp, f) for f in sp.__struct_fields__ if f != "seed"}  # noqa: E731
    assert gpu.seed is not None and cpu.seed is None and fields(gpu) == fields(cpu)
    assert (cpu.n, cpu.temperature, cpu.top_p, cpu.max_tokens, cpu.logprobs) == (4, 0.7, 0.9, 16, 0)


class WrongEngine:
    """Answers every prompt G times with "0" (no answer is 0): collect_batch keeps every group (GRPO)."""
    max_model_len = None

    @staticmethod
    def tokenizer(text, add_special_tokens=True):  # one id per character
        return {"input_ids": [3] * len(text)}

    def generate(self, prompts, n, seed=None, logprobs=True):
        from rollout import Sample
        return [[Sample(prompt_ids=[3], token_ids=[5], text="0", length=1, truncated=False, logprobs=None)
                 for _ in range(n)] for _ in prompts]


def test_trl_learn_feeds_trl_the_rows_train_py_draws_step_by_step():
    """scripts/trl_learn.drawn_prompts, the list TRL is fed, equals what collect_batch draws over the run's
    steps, in order."""
    from data import prompt_stream
    from scripts import trl_learn
    cfg = load_config(ROOT / "configs/experiments/smol_learn.yaml",  # the fake tokenizer has no chat template
                      ["steps=3", "prompts_per_step=4", "G=2", "reward.workers=0", "seed=7", "rollout.template=qwen_math"])
    stream, drawn = prompt_stream(cfg.data, cfg.seed), []
    for step in range(cfg.steps):
        batch = train.collect_batch(cfg, WrongEngine(), stream, step, {"rollout": 0.0, "verify": 0.0})
        drawn += [r["problem"] for r in batch.rows]
    assert len(drawn) == 12 and len(set(drawn)) > 1
    assert [r["problem"] for r in trl_learn.drawn_prompts(cfg)] == drawn
    other = load_config(ROOT / "configs/experiments/smol_learn.yaml", ["steps=3", "prompts_per_step=4", "seed=8"])
    assert [r["problem"] for r in trl_learn.drawn_prompts(other)] != drawn  # the seed draws them
