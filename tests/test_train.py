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
    cfg = train.load_config(ROOT / "configs" / f"{method}.yaml", TINY + [
        f"out_dir={tmp_path}", "steps=1", "prompts_per_step=4", "G=4", "mini_batches=2", "micro_batch_size=5",
        "rollout.engine=hf", "optim.lr=1e-3", "optim.warmup_steps=1"])
    train.check_config(cfg)
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
    model_dir = train.build_tiny_model(tmp_path / "model")
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
        assert {k: v for k, v in ra.items() if not skip(k)} == pytest.approx({k: v for k, v in rb.items() if not skip(k)}, rel=1e-6, abs=1e-9), ra["step"]


def test_checkpoint_loads_in_transformers_and_vllm(tmp_path):
    cfg = train.load_config(ROOT / "configs" / "tiny.yaml", TINY + [f"out_dir={tmp_path}", "steps=1", "prompts_per_step=4",
                                                                     "rollout.engine=hf"])
    train.train(cfg)
    ckpt = train.latest_checkpoint(tmp_path)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    from rollout import RolloutConfig, make_engine
    engine = make_engine(RolloutConfig(engine="vllm", template="plain", max_tokens=3, temperature=0.0), str(ckpt / "model"))
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
])
def test_cli_errors_name_the_problem(args, message, tmp_path):
    proc = run_cli(["--config", str(ROOT / "configs" / "tiny.yaml"), f"out_dir={tmp_path}", "steps=1", *args])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and message in out, out


def test_data_rows_without_answer_are_reported_and_skipped(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "question": "1+1", "sol": "2"}\n{"id": "b", "question": "2+2"}\n'
                    '{"id": "c", "question": "3+3", "sol": ""}\n\n{"id": "d", "question": "4+4", "sol": 8}\n')
    with pytest.warns(UserWarning) as caught:
        rows = train.load_rows(train.DataConfig(train=str(path), problem_key="question", answer_key="sol"), seed=0)
    assert [r["id"] for r in rows] == ["a", "d"] and rows[1]["answer"] == "8" and rows[1]["problem"] == "4+4"
    assert sorted(str(w.message).split("row ")[1].split(" ")[0] for w in caught) == ["b", "c"]
    path.write_text('{"question": "1+1", "sol": "2"}\n{not json\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        train.load_rows(train.DataConfig(train=str(path), problem_key="question", answer_key="sol"), seed=0)


def test_overlong_penalty_and_prompt_stream_resume():
    # DAPO eq. 13 with L_max 20, L_cache 4: 0 up to 16, linear to -1 at 20, -1 beyond
    assert [train.overlong_penalty(n, 20, 4) for n in (10, 16, 17, 18, 20, 21)] == [0, 0, -0.25, -0.5, -1, -1]
    rows = [{"id": i} for i in range(7)]
    a = train.PromptStream(rows, seed=3, shuffle=True)
    first = a.take(5)
    b = train.PromptStream(rows, seed=3, shuffle=True)
    b.load_state_dict(a.state_dict())
    assert [r["id"] for r in a.take(9)] == [r["id"] for r in b.take(9)]
    epoch = train.PromptStream(rows, seed=3, shuffle=True).take(7)
    assert sorted(r["id"] for r in epoch) == list(range(7)) and [r["id"] for r in epoch[:5]] == [r["id"] for r in first]


def test_run_summary_averages_first_and_last_window(tmp_path):
    rows = [{"step": s, "reward_mean": s / 10} for s in range(1, 11)]
    rows.insert(5, {"step": 5, "val/synthetic": 0.25})
    rows.append({"step": 10, "val/synthetic": 0.5})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # first 3 steps: (0.1 + 0.2 + 0.3) / 3 = 0.2; last 3: (0.8 + 0.9 + 1.0) / 3 = 0.9; the latest eval wins
    assert train.run_summary(path, window=3) == \
        "summary: reward 0.200 (first 3 steps) -> 0.900 (last 3 steps); val/synthetic 0.500"


def test_plot_draws_the_figures_the_metrics_support(tmp_path):
    def write_run(name, daro):
        rows = []
        for s in range(1, 31):
            r = {"step": s, "reward_mean": s / 30, "entropy": 1 - s / 60, "len_mean": 3.0, "len_correct": 2.0,
                 "len_incorrect": 4.0, "bucket_scale/1": 0.1, "bucket_scale/7": 0.2, "score_by_level/1": 0.5}
            if daro:
                r.update({"daro_w/1": 1.0 + s / 100, "daro_w/7": 1.0 - s / 100})
            rows.append(r)
        rows.append({"step": 30, "val/synthetic": 0.4})
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    grpo, daro = write_run("grpo", daro=False), write_run("daro", daro=True)
    written = train.plot_main([grpo, "--out", str(tmp_path / "a")])
    assert sorted(p.name for p in written) == ["dynamics.png", "lengths.png", "loss_per_difficulty.png",
                                                "pass_rate_per_level.png", "reward.png"]  # no DARO weights to draw
    written = train.plot_main([grpo, daro, "--out", str(tmp_path / "b")])  # two runs on one figure
    assert "weights_per_difficulty.png" in {p.name for p in written}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in written)
    with pytest.raises(SystemExit, match="no metrics file"):
        train.plot_main([str(tmp_path / "missing")])


def test_tensorboard_without_the_package_is_a_config_error(monkeypatch):
    cfg = train.load_config(ROOT / "configs" / "tiny.yaml", ["tensorboard=true"])
    real_find_spec = train.importlib.util.find_spec
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real_find_spec(name))
    with pytest.raises(train.ConfigError, match="'tensorboard' is true but the tensorboard package is not installed"):
        train.check_config(cfg)
    train.check_config(train.load_config(ROOT / "configs" / "tiny.yaml", []))  # off: no package needed
