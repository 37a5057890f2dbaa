"""rollout.py on the CPU: the real vLLM CPU engine and the transformers fallback on a tiny Qwen2.

One vLLM engine per module (starting one is the slow part). References are independent of the engines:
log-probs are recomputed by a plain transformers forward pass, prompt ids from the tokenizer's
character table, EOS/stop/truncation rules checked token by token.
"""
import dataclasses
import importlib.util
import json
import os
import string
import subprocess
import sys
import textwrap

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from rollout import (RolloutConfig, Sample, format_prompt, iter_full_parameters, make_engine,  # noqa: E402
                     resolve_dtype, sampling_seed, vllm_engine_args)
from conftest import ROOT  # noqa: E402
from tiny import build_tiny_model  # noqa: E402

EOS = 1
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # build_tiny_model's table, ids from 3
PROMPTS = ["1+1=", "What is 7*6?\n", "x"]


def has_vllm():
    return importlib.util.find_spec("vllm") is not None


needs_vllm = pytest.mark.skipif(not has_vllm(), reason="vLLM not installed")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


def config(engine, **overrides):
    return RolloutConfig(engine=engine, template="plain", dtype="float32", max_tokens=64,
                         max_model_len=256, **overrides)


@pytest.fixture(scope="module")
def vllm_engine(model_dir):
    if not has_vllm():
        pytest.skip("vLLM not installed")
    engine = make_engine(config("vllm"), model_dir, seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(model_dir):
    engine = make_engine(config("hf"), model_dir, seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def trainer_model(model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def recomputed_logprobs(model, sample):
    """log pi(token | prefix) of every response token by one forward pass of the transformers model."""
    ids = torch.tensor([sample.prompt_ids + sample.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    p = len(sample.prompt_ids)
    logprobs = torch.log_softmax(logits[p - 1:-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(sample.token_ids)[:, None])[:, 0]


def mean_abs_logprob_diff(model, results):
    diffs = [(recomputed_logprobs(model, s) - torch.tensor(s.logprobs, dtype=torch.float64)).abs()
             for samples in results for s in samples]
    return torch.cat(diffs).mean().item()


def decode_chars(ids):
    return "".join(CHARS[t - 3] for t in ids if 3 <= t < 3 + len(CHARS))


def check_samples(results, prompts, n, max_tokens, stops=()):
    """Schema and the EOS / stop / truncation rules, token by token."""
    assert len(results) == len(prompts)
    for prompt, samples in zip(prompts, results):
        assert len(samples) == n
        for s in samples:
            assert isinstance(s, Sample)
            assert s.prompt_ids == [CHARS.index(c) + 3 for c in prompt]
            assert s.length == len(s.token_ids) == len(s.logprobs) >= 1
            assert all(isinstance(t, int) for t in s.token_ids)
            assert all(isinstance(x, float) and x <= 0 for x in s.logprobs)
            assert s.length <= max_tokens
            assert s.text == decode_chars(s.token_ids)
            # EOS can only be the last token; after it the response ends and is not truncated.
            assert EOS not in s.token_ids[:-1]
            ended_by_stop = any(x in s.text for x in stops)
            if stops:  # no stop string is complete before the last token
                assert not any(x in decode_chars(s.token_ids[:-1]) for x in stops)
            if s.token_ids[-1] == EOS or ended_by_stop:
                assert not s.truncated
            else:
                assert s.truncated and s.length == max_tokens


def test_config_defaults_and_bad_input(model_dir, hf_engine):
    cfg = RolloutConfig()
    assert (cfg.engine, cfg.template, cfg.temperature, cfg.top_p, cfg.stop) == ("vllm", "qwen_math", 1.0, 1.0, [])
    with pytest.raises(ValueError, match="engine"):
        make_engine(dataclasses.replace(cfg, engine="sglang"), model_dir)
    with pytest.raises(ValueError, match="template"):
        make_engine(dataclasses.replace(cfg, engine="hf", template="alpaca"), model_dir)
    with pytest.raises(ValueError, match="empty"):
        hf_engine.generate(["ok", ""], 2)
    with pytest.raises(ValueError, match="n must"):
        hf_engine.generate(["ok"], 0)
    with pytest.raises(ValueError, match="max_model_len"):
        hf_engine.generate(["y" * 300], 1)
    with pytest.raises(TypeError, match="list"):
        hf_engine.generate("a single string", 1)


def test_templates(model_dir):
    engine = make_engine(dataclasses.replace(config("hf"), template="qwen_math"), model_dir)
    expected = "2+2?\nLet's think step by step and output the final answer within \\boxed{}."
    assert format_prompt("2+2?", "qwen_math", engine.tokenizer) == expected
    assert format_prompt("2+2?", "plain", engine.tokenizer) == "2+2?"
    [[s]] = engine.generate(["2+2?"], 1, max_tokens=2)
    assert s.prompt_ids == engine.tokenizer(expected)["input_ids"]
    with pytest.raises(ValueError, match="chat template"):  # the char tokenizer has none
        format_prompt("2+2?", "chat", engine.tokenizer)
    engine.tokenizer.chat_template = "{% for m in messages %}U:{{ m['content'] }}|{% endfor %}A:"
    assert format_prompt("2+2?", "chat", engine.tokenizer) == f"U:{expected}|A:"
    # rollout.instruction replaces the default instruction in both templates, and the engine samples from it
    assert format_prompt("2+2?", "chat", engine.tokenizer, instruction="Add.") == "U:2+2?\nAdd.|A:"
    asked = make_engine(dataclasses.replace(config("hf"), template="qwen_math", instruction="Add."), model_dir)
    [[s]] = asked.generate(["2+2?"], 1, max_tokens=2)
    assert s.prompt_ids == asked.tokenizer("2+2?\nAdd.")["input_ids"]


@needs_vllm
def test_vllm_samples_fields_eos_and_truncation(vllm_engine):
    results = vllm_engine.generate(PROMPTS, 8, max_tokens=128)
    check_samples(results, PROMPTS, 8, 128)
    flat = [s for samples in results for s in samples]
    # A random model emits EOS with p ~ 1/112 per token: both endings occur among 24 samples.
    assert any(s.truncated for s in flat) and any(s.token_ids[-1] == EOS for s in flat)
    # The G samples differ (two responses of only EOS can coincide: p ~ 1/112 each)
    long = [tuple(s.token_ids) for s in flat if s.length > 3]
    assert len(long) > 12 and len(set(long)) == len(long)


def test_hf_same_schema(hf_engine):
    results = hf_engine.generate(PROMPTS, 8, max_tokens=128)
    check_samples(results, PROMPTS, 8, 128)
    flat = [s for samples in results for s in samples]
    assert any(s.truncated for s in flat) and any(s.token_ids[-1] == EOS for s in flat)
    long = [tuple(s.token_ids) for s in flat if s.length > 3]
    assert len(long) > 12 and len(set(long)) == len(long)


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_stop_strings(engine_name, request):
    if engine_name == "vllm" and not has_vllm():
        pytest.skip("vLLM not installed")
    engine = request.getfixturevalue(f"{engine_name}_engine")
    stops = ["a", "b", "c", "d", "=="]
    engine.cfg, old = dataclasses.replace(engine.cfg, stop=stops), engine.cfg
    try:
        results = engine.generate(PROMPTS, 8, max_tokens=48)
    finally:
        engine.cfg = old
    check_samples(results, PROMPTS, 8, 48, stops)
    assert any(any(x in s.text for x in stops) for samples in results for s in samples)


def test_hf_logprobs_match_forward(hf_engine, trainer_model):
    # The fallback's log-probs come from generate's raw logits (left-padded, KV-cached batch).
    results = hf_engine.generate(PROMPTS, 4, max_tokens=32)
    assert mean_abs_logprob_diff(trainer_model, results) < 1e-5


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_greedy_is_deterministic(engine_name, request, trainer_model):
    if engine_name == "vllm" and not has_vllm():
        pytest.skip("vLLM not installed")
    engine = request.getfixturevalue(f"{engine_name}_engine")
    a = engine.generate(PROMPTS, 3, temperature=0, max_tokens=16)
    b = engine.generate(PROMPTS, 3, temperature=0, max_tokens=16)
    for sa, sb in zip(a, b):
        assert [s.token_ids for s in sa] == [s.token_ids for s in sb]
        assert len({tuple(s.token_ids) for s in sa}) == 1  # all n greedy samples coincide
    # Greedy = argmax of the model's next-token distribution at every step (the log-prob is the max).
    for samples in a:
        s = samples[0]
        ids = torch.tensor([s.prompt_ids + s.token_ids])
        with torch.no_grad():
            logits = trainer_model(ids).logits[0, len(s.prompt_ids) - 1:-1]
        assert logits.argmax(-1).tolist() == s.token_ids


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_fixed_seed_reproduces(engine_name, request, model_dir):
    if engine_name == "vllm" and not has_vllm():
        pytest.skip("vLLM not installed")
    engine = request.getfixturevalue(f"{engine_name}_engine")

    def tokens(results):
        return [[s.token_ids for s in samples] for samples in results]

    a = engine.generate(PROMPTS, 4, max_tokens=24, seed=123)
    b = engine.generate(PROMPTS, 4, max_tokens=24, seed=123)
    c = engine.generate(PROMPTS, 4, max_tokens=24, seed=124)
    assert tokens(a) == tokens(b) and tokens(a) != tokens(c)
    # Without an explicit seed every call draws fresh samples (the call counter enters the seed).
    assert tokens(engine.generate(PROMPTS, 4, max_tokens=24)) != tokens(engine.generate(PROMPTS, 4, max_tokens=24))
    if engine_name == "hf":  # a second engine with the same seed repeats the first one's calls
        first = make_engine(config("hf"), model_dir, seed=7)
        second = make_engine(config("hf"), model_dir, seed=7)
        for _ in range(2):
            assert tokens(first.generate(PROMPTS, 2, max_tokens=8)) == tokens(second.generate(PROMPTS, 2, max_tokens=8))


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_without_logprobs_the_same_samples_and_text(engine_name, request):
    """generate(logprobs=False), as the trainer calls it outside diagnostics: the same tokens and text for
    the same seed, no log-probs; the text (vLLM: one batch decode instead of its incremental detokenizer)
    is the response's characters."""
    if engine_name == "vllm" and not has_vllm():
        pytest.skip("vLLM not installed")
    engine = request.getfixturevalue(f"{engine_name}_engine")
    a = engine.generate(PROMPTS, 4, max_tokens=24, seed=5)
    b = engine.generate(PROMPTS, 4, max_tokens=24, seed=5, logprobs=False)
    for sa, sb in zip((s for g in a for s in g), (s for g in b for s in g)):
        assert sb.token_ids == sa.token_ids and sb.text == sa.text == decode_chars(sb.token_ids)
        assert sb.logprobs is None and sb.truncated == sa.truncated


def test_sampling_seed():
    assert sampling_seed(0, 3, 5) == sampling_seed(0, 3, 5)
    seeds = {sampling_seed(0, call, i) for call in range(20) for i in range(50)}
    assert len(seeds) == 1000 and all(0 <= s < 2 ** 31 for s in seeds)
    assert sampling_seed(0, None, 5) != sampling_seed(0, 0, 5)
    assert sampling_seed(0, 3) == sampling_seed(0, 3, 0)


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_generate_leaves_the_trainers_rng_alone(engine_name, request):
    if engine_name == "vllm" and not has_vllm():
        pytest.skip("vLLM not installed")
    engine = request.getfixturevalue(f"{engine_name}_engine")
    torch.manual_seed(42)
    expected = torch.rand(3)  # what the trainer draws next when nothing else touches the generator
    torch.manual_seed(42)
    engine.generate(PROMPTS, 4, max_tokens=8)
    engine.generate(PROMPTS, 4, max_tokens=8, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_resolve_dtype_table():
    # (requested, checkpoint, on_gpu, cpu_bf16) -> engine dtype, written out case by case
    cases = {
        ("auto", "float32", False, False): "float32",
        ("auto", "float32", False, True): "float32",
        ("auto", "bfloat16", False, False): "float32",  # emulated bf16 on this CPU: float32 is faster
        ("auto", "bfloat16", False, True): "bfloat16",
        ("auto", "float16", False, True): "float32",
        ("auto", "bfloat16", True, False): "bfloat16",  # GPU: the checkpoint's dtype
        ("auto", "float32", True, False): "float32",
        ("auto", "float16", True, False): "float16",
        ("bfloat16", "float32", False, False): "bfloat16",  # explicit choices are kept
        ("float32", "bfloat16", True, True): "float32",
    }
    for args, want in cases.items():
        assert resolve_dtype(*args) == want, args
    with pytest.raises(ValueError, match="unknown dtype 'fp32'"):
        resolve_dtype("fp32", "float32", False, False)
    with pytest.raises(ValueError, match="checkpoint dtype 'int8'"):
        resolve_dtype("auto", "int8", False, False)


def test_hf_engine_auto_dtype_follows_the_checkpoint_and_the_cpu(tmp_path, monkeypatch):
    import rollout
    from transformers import AutoModelForCausalLM
    build_tiny_model(tmp_path, seed=0)
    AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).save_pretrained(tmp_path)  # a bf16 checkpoint
    cfg = dataclasses.replace(config("hf"), dtype="auto")
    for native in (False, True):
        monkeypatch.setattr(rollout, "cpu_has_native_bf16", lambda: native)
        engine = make_engine(cfg, str(tmp_path))
        want = torch.bfloat16 if native else torch.float32
        assert engine.dtype == str(want).removeprefix("torch.")
        assert {p.dtype for p in engine.model.parameters()} == {want}


def test_vllm_engine_args():
    cfg = RolloutConfig(max_model_len=512)
    cpu = vllm_engine_args(cfg, "m", 3, on_gpu=False, dtype="float32", distributed=False)
    assert cpu == dict(model="m", dtype="float32", seed=3, max_model_len=512, enforce_eager=True,
                       enable_prefix_caching=True, block_size=32)
    # torchrun: every rank's engine through the external launcher (device from LOCAL_RANK), TP 1
    gpu = vllm_engine_args(cfg, "m", 3, on_gpu=True, dtype="bfloat16", distributed=True)
    assert gpu == dict(model="m", dtype="bfloat16", seed=3, max_model_len=512, enforce_eager=False,
                       enable_prefix_caching=True, gpu_memory_utilization=0.5, enable_sleep_mode=True,
                       distributed_executor_backend="external_launcher", tensor_parallel_size=1)
    assert vllm_engine_args(cfg, "m", 3, on_gpu=False, dtype="float32", distributed=True)[
        "distributed_executor_backend"] == "external_launcher"
    assert "distributed_executor_backend" not in vllm_engine_args(cfg, "m", 3, on_gpu=True, dtype="float32",
                                                                  distributed=False)
    assert vllm_engine_args(dataclasses.replace(cfg, block_size=64), "m", 3, on_gpu=True, dtype="float32",
                            distributed=False)["block_size"] == 64
    with pytest.raises(ValueError, match="tensor_parallel_size=2 is not supported"):
        vllm_engine_args(dataclasses.replace(cfg, tensor_parallel_size=2), "m", 3, on_gpu=True, dtype="float32",
                         distributed=True)


@needs_vllm
def test_samples_of_a_prompt_share_its_full_kv_blocks(model_dir):
    """vLLM shares a prompt's FULL KV blocks among its n samples, within one batch too. With rollout.py's
    CPU block of 32 tokens, 7 of 8 samples of a 70-token prompt find its first 64 tokens cached (prefilled
    once); with vLLM's CPU default of 128 no block is full and all 8 x 70 tokens are prefilled. (Its own
    process: a second in-process engine would tear down the module's engine's parallel groups.)"""
    script = textwrap.dedent("""
        import json, os, sys
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from rollout import RolloutConfig, _vllm_shutdown, vllm_engine_args
        hits = {}
        for block_size in (None, 128):
            cfg = RolloutConfig(template="plain", dtype="float32", max_model_len=256, block_size=block_size)
            kwargs = vllm_engine_args(cfg, sys.argv[1], 0, on_gpu=False, dtype="float32", distributed=False)
            llm = vllm.LLM(**kwargs, disable_log_stats=False)  # the counters below need stats on
            llm.generate([TokensPrompt(prompt_token_ids=[3 + i % 40 for i in range(70)])],
                         SamplingParams(n=8, max_tokens=2), use_tqdm=False)
            m = {m.name: m.value for m in llm.get_metrics() if m.name.startswith("vllm:prefix_cache_")}
            hits[str(block_size)] = [m["vllm:prefix_cache_queries"], m["vllm:prefix_cache_hits"]]
            _vllm_shutdown(llm, owns_process_group=True)
        print("HITS", json.dumps(hits))
    """)
    out = subprocess.run([sys.executable, "-c", script, model_dir], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    hits = json.loads(out.stdout.split("HITS", 1)[1])
    assert hits == {"None": [8 * 70, 7 * 64], "128": [8 * 70, 0]}, hits


def perturbed_copy(model, scale, seed):
    import copy
    changed = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return changed


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_sync_weights_makes_engine_logprobs_match_trainer(engine_name, request, trainer_model):
    """The test that proves the sync: engine log-probs of its own samples vs. transformers' recomputation."""
    if engine_name == "vllm" and not has_vllm():
        pytest.skip("vLLM not installed")
    engine = request.getfixturevalue(f"{engine_name}_engine")
    assert trainer_model.config.tie_word_embeddings  # lm_head must travel under its own name too
    trainer = perturbed_copy(trainer_model, 0.05, seed=1)
    before = engine.generate(PROMPTS, 4, max_tokens=32)
    assert mean_abs_logprob_diff(trainer, before) > 1e-2  # engine still has the old weights
    assert mean_abs_logprob_diff(trainer_model, before) < 1e-4
    engine.sleep()  # no-ops on the CPU; the GPU order is sleep -> train -> sync_weights -> generate
    engine.sync_weights(trainer)
    after = engine.generate(PROMPTS, 4, max_tokens=32)
    assert mean_abs_logprob_diff(trainer, after) < 1e-4
    engine.sync_weights(trainer_model)  # back to the original weights for the other tests
    assert mean_abs_logprob_diff(trainer_model, engine.generate(PROMPTS, 2, max_tokens=16)) < 1e-4


FSDP_SCRIPT = textwrap.dedent("""
    import copy, gc, os, sys, torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, sys.argv[2])
    from rollout import RolloutConfig, iter_full_parameters, make_engine
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    reference = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    g = torch.Generator().manual_seed(1)  # same perturbation on both ranks: the weights differ from the disk's
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    expected = {k: v.clone() for k, v in reference.state_dict().items()}
    model = copy.deepcopy(reference)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert any(hasattr(p, "full_tensor") for p in model.parameters()), "not sharded"
    names = []
    for name, tensor in iter_full_parameters(model):
        assert not hasattr(tensor, "full_tensor"), name
        assert torch.equal(tensor.cpu(), expected[name]), name
        names.append(name)
    assert sorted(names) == sorted(expected), (sorted(set(expected) - set(names)), names)
    if sys.argv[3] == "vllm":  # each rank's own engine through vLLM's external launcher
        cfg = RolloutConfig(engine="vllm", template="plain", dtype="float32", max_tokens=16, max_model_len=128)
        engine = make_engine(cfg, sys.argv[1], seed=rank)
        parallel = engine.llm.llm_engine.vllm_config.parallel_config
        assert parallel.distributed_executor_backend == "external_launcher", parallel.distributed_executor_backend
        engine.sync_weights(model)  # every rank gathers the shards, each loads them into its engine
        prompts = ["1+1=", "2*3="] if rank == 0 else ["x", "What is 9-4?"]
        worst = 0.0
        for samples in engine.generate(prompts, 4):
            for s in samples:
                ids = torch.tensor([s.prompt_ids + s.token_ids])
                with torch.no_grad():
                    logp = torch.log_softmax(reference(ids).logits[0, len(s.prompt_ids) - 1:-1].double(), -1)
                mine = logp.gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
                worst = max(worst, (mine - torch.tensor(s.logprobs, dtype=torch.float64)).abs().max().item())
        assert worst < 1e-4, worst
        engine.close()
    done = torch.tensor([1.0])
    dist.all_reduce(done)  # the trainer's gloo group still works after the engines
    if rank == 0:
        print(f"ok {len(names)} on {int(done)} ranks", flush=True)
    del model  # FSDP state freed before its process group (torch 2.13 gloo can abort at exit otherwise)
    gc.collect()
    dist.destroy_process_group()
""")


def test_fsdp2_gather_and_external_launcher_engines(model_dir, tmp_path):
    """Two gloo ranks, FSDP2-sharded tiny model: every parameter arrives whole, tied lm_head included.
    With vLLM: each rank builds its engine with the external launcher, syncs the sharded weights into it,
    samples its own prompts with log-probs equal to the unsharded model's, and all_reduce still works."""
    script = tmp_path / "fsdp_gather.py"
    script.write_text(FSDP_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script), model_dir, root, "vllm" if has_vllm() else "none"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok 27 on 2 ranks" in done.stdout


def test_iter_full_parameters_plain_model(trainer_model):
    pairs = list(iter_full_parameters(trainer_model))
    names = [n for n, _ in pairs]
    assert sorted(names) == sorted(trainer_model.state_dict())
    d = dict(pairs)
    assert torch.equal(d["lm_head.weight"], d["model.embed_tokens.weight"])
