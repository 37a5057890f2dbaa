"""train.py on a real pretrained model (SmolLM2-135M-Instruct, Llama, tied embeddings, chat template): two
steps with multi-token responses scored by verify.py, engine-vs-trainer log-probs after the weight sync in
the real loop, and a checkpoint that transformers and vLLM load and agree on. configs/experiments/smol.yaml shares each
prompt among its responses (policy.block_attention), so the log-prob agreement also checks that path on a
model with grouped-query attention (9 query heads, 3 key/value heads)."""
import json
import math
import os

import pytest
import torch

from conftest import ROOT

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from scripts import smol  # noqa: E402
import train  # noqa: E402
from config import check_config, load_config  # noqa: E402


@pytest.fixture(scope="module")
def smol_dir():
    try:
        return smol.ensure_smollm2(ROOT / smol.DEFAULT_DIR)
    except (OSError, ImportError, ValueError) as e:
        pytest.skip(f"SmolLM2 could not be provisioned: {e}")


def test_two_grpo_steps_and_a_checkpoint_both_engines_load(smol_dir, tmp_path):
    pytest.importorskip("vllm")
    cfg = load_config(ROOT / "configs/experiments/smol.yaml", [
        f"out_dir={tmp_path}", f"model.path={smol_dir}", "steps=2", "prompts_per_step=4", "G=4",
        "rollout.max_tokens=40", "optim.lr=1e-5", "optim.warmup_steps=1", "reward.workers=0", "diagnostics=true",
        "loss.entropy_coef=0.01"])  # an entropy bonus moves the weights even when every reward is 0
    check_config(cfg)
    train.train(cfg)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert all(v is None or isinstance(v, str) or math.isfinite(v) for v in r.values()), r
        assert r["len_mean"] > 5 and 0 <= r["truncated_frac"] <= 1 and 0 <= r["reward_mean"] <= 1
    # step 2 sampled with the weights synced after step 1: the engine's log-probs equal the trainer's
    diag = [json.loads(line) for line in (tmp_path / "diagnostics" / "rank_0.jsonl").read_text().splitlines()]
    assert diag[-1]["logprob_tokens"] > 50 and diag[-1]["logprob_delta_mean"] < 1e-4, diag[-1]
    # the checkpoint: trained weights (they moved), loadable by transformers and by vLLM, same greedy text
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    ckpt = sorted((tmp_path / "checkpoints").glob("step_*"))[-1]
    before = load_file(smol_dir / "model.safetensors")
    after = load_file(ckpt / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model = AutoModelForCausalLM.from_pretrained(ckpt / "model", dtype=torch.float32)
    from rollout import RolloutConfig, make_engine
    engine = make_engine(RolloutConfig(template="chat", max_tokens=12, temperature=0.0, dtype="float32",
                                       max_model_len=512), str(ckpt / "model"))
    try:
        (samples,) = engine.generate(["What is 12 + 30?"], 1)
    finally:
        engine.close()
    ids = torch.tensor([samples[0].prompt_ids])
    greedy = model.generate(ids, max_new_tokens=len(samples[0].token_ids), do_sample=False)[0, ids.shape[1]:]
    assert greedy.tolist() == samples[0].token_ids
