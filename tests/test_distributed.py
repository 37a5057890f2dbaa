"""The distributed setup on the CPU (gloo), through the helpers the GPU path uses: one process and
`torchrun --nproc_per_node 2`. DCP checkpoints round-trip the model and AdamW state bit for bit, also into
another world size (1 -> 2, 2 -> 1); all ranks agree on the checkpoint or all stop, naming the rank that
cannot read it; an over-long prompt is skipped and counted on every rank; weight sync casts shards to the
engine's dtype before gathering them; benchmarks/gpu_check.py runs, and its run resumes in one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from distributed import full_model_state, init_distributed, shutdown_distributed, world
from tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(port, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]


def test_one_process_is_a_group_of_one():
    """Without torchrun, init_distributed makes a one-rank gloo group and the torchrun variables that vLLM's
    external launcher reads; shutdown takes both away again."""
    import torch.distributed as dist
    assert "RANK" not in os.environ
    device = init_distributed()
    try:
        assert device == torch.device("cpu") and world() == (0, 1)
        assert dist.get_backend() == "gloo" and os.environ["RANK"] == "0" and os.environ["LOCAL_RANK"] == "0"
        t = torch.tensor([3.0])
        dist.all_reduce(t)
        assert t.item() == 3.0
    finally:
        shutdown_distributed()
    assert not dist.is_initialized() and "RANK" not in os.environ and "MASTER_PORT" not in os.environ


def read(work, name):
    return json.loads((work / name).read_text())


def test_publish_keeps_the_checkpoint_it_just_wrote(tmp_path):
    """A fresh run into an earlier, longer run's out_dir: its step 24 sorts below the stale step 30, and
    rotation by name used to drop the checkpoint just written (`latest` then named a missing dir)."""
    from distributed import latest_checkpoint, publish
    root = tmp_path / "checkpoints"
    for name in ("step_000010", "step_000030", "tmp_new"):
        (root / name).mkdir(parents=True)
    publish(root, root / "tmp_new", root / "step_000024", keep=1)
    assert latest_checkpoint(tmp_path) == root / "step_000024" and latest_checkpoint(tmp_path).is_dir()
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000024"]  # keep 1: the one just written
    (root / "tmp_new").mkdir()
    publish(root, root / "tmp_new", root / "step_000025", keep=2)  # keep 2: it and the highest other
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000024", "step_000025"]


def test_publish_keeps_every_checkpoint_while_fewer_than_keep(tmp_path):
    """keep 4, saves at steps 5, 10, 15, 20: all four stay. With fewer others than keep - 1 the slice end went
    negative and dropped the oldest (keep 4 kept 2: steps 15 and 20)."""
    from distributed import publish
    root = tmp_path / "checkpoints"
    for step in (5, 10, 15, 20, 25):
        (root / "tmp").mkdir(parents=True)
        publish(root, root / "tmp", root / f"step_{step:06d}", keep=4)
        kept = [int(p.name[5:]) for p in sorted(root.glob("step_*"))]
        assert kept == [s for s in (5, 10, 15, 20, 25) if s <= step][-4:]


def test_checkpoints_agreement_and_long_prompts_on_two_ranks(tmp_path):
    model_dir = build_tiny_model(tmp_path / "model")
    script = [str(ROOT / "tests" / "dist_checks.py"), str(tmp_path), str(model_dir)]
    run = lambda cmd: subprocess.run(cmd, check=True, env=ENV, timeout=400, cwd=ROOT)  # noqa: E731
    run([sys.executable, *script, "save:w1"])                      # one process: train a step, checkpoint
    run(torchrun(29641, *script, "checks", "load:w1", "save:w2"))  # 2 ranks: load the 1-rank checkpoint, save
    run([sys.executable, *script, "load:w2", "load:w1"])           # one process: load both

    # DCP round trip, bit for bit: same world size, 1 -> 2 and 2 -> 1 (rank 0 compares full states)
    for name in ["load_w1_w2_rank0.json", "load_w2_w1_rank0.json", "load_w1_w1_rank0.json"]:
        out = read(tmp_path, name)
        assert out["differ"] == [] and out["step"] == 1 and out["stream"] == {"epoch": 0, "pos": 3}, name
    # the restored AdamW state is the one that was saved: one more step from the 1-rank checkpoint gives the
    # same parameters on 1 and on 2 ranks (up to float32 summation order), and it moved them
    one, two = torch.load(tmp_path / "w1_after_w1.pt"), torch.load(tmp_path / "w1_after_w2.pt")
    saved = torch.load(tmp_path / "w1_states.pt")
    scale = max(float((one["model"][k] - saved["model"][k]).abs().max()) for k in saved["model"])
    assert scale > 1e-3
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-3, atol=2e-3 * scale)

    checks = [read(tmp_path, f"checks__w2_rank{r}.json") for r in (0, 1)]
    for r, c in enumerate(checks):
        assert c["backend"] == "gloo" and c["used"]["all_reduce cpu"] == "gloo"
        # rank 1's own `latest` said step 2: rank 0 decided step 4, in rank 1's own run dir
        assert c["agreed"] == "step_000004" and c["agreed_dir"] == str(tmp_path / f"agree_rank{r}")
        # step 6 exists for rank 0 only: both ranks stop, and the error names rank 1 and its missing file
        assert "rank 1 cannot read" in c["error"] and "agree_rank1/checkpoints/step_000006/trainer.pt" in c["error"]
        assert "rank 0 cannot" not in c["error"]
        # rank 1 drew the over-long prompt: skipped there, counted on both ranks
        assert c["skipped"] == 1
        # weight sync into a bf16 engine: bf16 shards gathered, the values of float32 gathered then cast
        assert c["sync_cast"] == {"gathered": ["torch.bfloat16"], "names": True, "sharded": True, "differ": []}
    assert checks[0]["kept"] == ["1+2=", "3+4="] and checks[1]["kept"] == ["5+6="]
    assert checks[0]["groups"] == 2 and checks[1]["groups"] == 1


def test_gpu_check_on_cpu_then_resume_in_one_process(tmp_path):
    """gpu_check.py under torchrun (2 gloo ranks, vLLM CPU engines, 2 steps); then its 2-rank checkpoint
    resumes in one process (2 -> 1) for a third step."""
    from gpu_check import overrides
    out = tmp_path / "run"
    proc = subprocess.run(torchrun(29643, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(out)),
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    for r in (0, 1):
        lines = [line for line in proc.stdout.splitlines() if line.startswith(f"[rank {r}]")]
        block = "\n".join(lines)
        assert "trainer device cpu | engine device cpu | world size 2" in block, block
        assert "all_reduce cpu -> gloo" in block
        assert "fsdp all_gather/reduce_scatter, grad-norm all_reduce cpu -> gloo" in block
        delta = next(line for line in lines if "log-prob |engine - trainer|" in line)
        assert float(delta.split(" max ")[1].split()[0]) < 1e-4, delta  # float32 engine and trainer
        assert "vLLM KV-cache blocks " in block and "KV-cache blocks None" not in block
        assert "LM-head kernel share of train time 0." in block
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]

    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/experiments/tiny.yaml"),
                              *overrides(out, 3, ["rollout.engine=hf"]), "--resume"],
                             env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stderr and "step_000002" in resumed.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    rank0 = [json.loads(line) for line in (out / "diagnostics" / "rank_0.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"]) for r in rank0] == [(1, 2), (2, 2), (3, 1)]


def test_gpu_check_real_shape_plumbing_on_cpu(tmp_path, tiny_model):
    """gpu_check.py --real-shape under torchrun (2 gloo ranks): a config as it stands (tiny, with gradient
    checkpointing on; the transformers engine, to keep it short) for 2 steps of 2 x 2 prompts; every rank forces
    its longest micro-batch (micro_batch_tokens 1024 of rows 512 wide: 2 rows) through forward and backward, and
    counts the checkpoint recomputes; then rank 0 resumes the run at world size 1 for a third step."""
    proc = subprocess.run(torchrun(29645, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "run"),
                                   "--real-shape", str(ROOT / "configs/experiments/tiny.yaml"), "--eval-limit", "4",
                                   f"model.path={tiny_model}", f"eval.benchmarks=[{tiny_model}/synthetic.jsonl]",
                                   "model.gradient_checkpointing=true", "micro_batch_tokens=1024",
                                   "rollout.engine=hf", "rollout.max_model_len=512"),
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    for r in (0, 1):
        block = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(f"[rank {r}]"))
        assert "world size 2" in block and f"model {tiny_model} in float32" in block, block
        # one forced pass and one update pass (in a grad-enabled forward each) x 2 layers, at both steps
        assert "step 2: longest micro-batch 1024 tokens" in block and "checkpoint recomputes 4" in block, block
    resumed = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("[rank 0, resumed]"))
    assert "world size 1" in resumed and "step 3: longest micro-batch 1024 tokens" in resumed, text
    assert "[resume] step 3 from step 2's checkpoint at world size 1" in proc.stdout
    rank0 = [json.loads(line) for line in (tmp_path / "run" / "diagnostics" / "rank_0.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"]) for r in rank0] == [(1, 2), (2, 2), (3, 1)]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "val/synthetic" in metrics[1]


def test_gpu_check_fails_when_checkpointing_does_not_engage():
    from gpu_check import check_recomputes
    on, off = {"model": {"gradient_checkpointing": True}}, {"model": {"gradient_checkpointing": False}}
    assert check_recomputes(0, {"checkpoint_recomputes": 0}, on) == 1
    assert check_recomputes(0, {"checkpoint_recomputes": 56}, on) == 0
    assert check_recomputes(0, {"checkpoint_recomputes": 0}, off) == 0


def test_one_process_trains_bf16_with_fp32_master_weights(tmp_path):
    """python train.py (a group of one) shards the policy with FSDP2 as torchrun does: bfloat16 compute,
    float32 parameters and AdamW state. An AdamW step of lr 1e-6 moves the weights by about 1e-6, far below
    bfloat16's resolution at their size (|w| 2^-8), and is kept."""
    from config import load_config
    from policy import load_policy, make_micro, per_token
    model_dir = build_tiny_model(tmp_path / "model")
    cfg = load_config(None, ["model.dtype=bfloat16"])
    device = init_distributed()
    policy = opt = None
    try:
        policy = load_policy(model_dir, cfg.model, cfg.rollout.temperature, device)
        assert all(p.dtype == torch.float32 and hasattr(p, "full_tensor") for p in policy.parameters())
        before = {k: v.clone() for k, v in full_model_state(policy.model).items()}
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)
        mb = make_micro([[5, 6, 7]] * 2, [[10, 11, 12], [13, 14]], [[1.0] * 3, [1.0] * 2], [[0], [1]], 0, device)
        logp, _ = per_token(policy, mb, grad=True)
        assert logp.dtype == torch.float32  # the kernel's output; the layers ran in bfloat16
        (-(logp * mb.mask).sum()).backward()
        assert all(p.grad.dtype == torch.float32 for p in policy.parameters())
        opt.step()
        assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
        after = full_model_state(policy.model)
        w = after["model.layers.0.mlp.up_proj.weight"]
        delta = (w - before["model.layers.0.mlp.up_proj.weight"]).abs()
        assert float((delta > 0).double().mean()) > 0.9 and float(delta.max()) < 2e-6
        # the same update on bfloat16 weights rounds away
        w_bf16 = before["model.layers.0.mlp.up_proj.weight"].bfloat16()
        assert float(((w_bf16 - 1e-6 * torch.sign(w_bf16)).bfloat16() != w_bf16).double().mean()) < 0.1
    finally:
        import gc
        del policy, opt
        gc.collect()
        shutdown_distributed()
