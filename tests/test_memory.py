"""The memory plan (memory.py): parameter counts from config.json against a model built on the meta device, the
fake-tensor activation measurement against real runs, the plan's arithmetic against hand-written formulas, every
GPU config in configs/ planned at its declared world size with 15% headroom, `train.py --memory-plan`, and
gpu_check's comparison of plan and measurement (issue 40)."""
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memory
from config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# The models' config.json as published on the hub (Qwen/Qwen2.5-Math-1.5B, Qwen/Qwen2.5-Math-7B,
# Qwen/Qwen2.5-0.5B-Instruct, Qwen/Qwen3-4B-Base). 7B: untied head and V 152,064; the others tie the head to
# V 151,936; Qwen3-4B-Base: head_dim 128 (32 heads x 128 = 4096 != hidden 2560) and q/k norms.
CONFIG_JSON = {
    "Qwen/Qwen2.5-Math-1.5B": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
        "intermediate_size": 8960, "max_position_embeddings": 4096, "max_window_layers": 21, "model_type": "qwen2",
        "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 10000, "sliding_window": 4096, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.37.0", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
        "vocab_size": 151936},
    "Qwen/Qwen2.5-Math-7B": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 18944, "max_position_embeddings": 4096, "max_window_layers": 28, "model_type": "qwen2",
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_theta": 10000, "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.37.0", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
        "vocab_size": 152064},
    "Qwen/Qwen2.5-0.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
    "Qwen/Qwen3-4B-Base": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560,
        "initializer_range": 0.02, "intermediate_size": 9728, "max_position_embeddings": 32768,
        "max_window_layers": 36, "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
}
# the parameter counts the model cards state (rounded there; exact here), a second reference beside the meta model
PARAMS = {"Qwen/Qwen2.5-Math-1.5B": 1_543_714_304, "Qwen/Qwen2.5-Math-7B": 7_615_616_512,
          "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768, "Qwen/Qwen3-4B-Base": 4_022_468_096}
GB = 1e9


def meta_model(config_json):
    from transformers import AutoConfig, AutoModelForCausalLM
    fields = {k: v for k, v in config_json.items() if k not in ("architectures", "torch_dtype")}
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("name", list(CONFIG_JSON))
def test_parameter_counts_equal_a_model_built_on_the_meta_device(name):
    shape = memory.ModelShape.from_config(CONFIG_JSON[name])
    model = meta_model(CONFIG_JSON[name])
    assert shape.params() == sum(p.numel() for p in model.parameters()) == PARAMS[name]  # tied: counted once
    assert shape.layer_params() == sum(p.numel() for p in model.model.layers[0].parameters())
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert shape.tied == tied == (name != "Qwen/Qwen2.5-Math-7B")
    assert shape.largest_param() == max(p.numel() for p in model.parameters())


def test_parameter_counts_by_hand():
    """Qwen2.5-Math-7B written out: q, k, v with biases, o without; gate, up, down; two norms; embedding and an
    untied head; final norm."""
    H, I, kv, V, L = 3584, 18944, 4 * 128, 152064, 28
    layer = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H
    shape = memory.ModelShape.from_config(CONFIG_JSON["Qwen/Qwen2.5-Math-7B"])
    assert shape.layer_params() == layer == 233_057_792
    assert shape.params() == L * layer + 2 * V * H + H
    # Qwen3-4B: no biases, q/k norms of head_dim, q is 32 x 128 = 4096 wide on a 2560 hidden, tied head
    H, I, q, kv, V, L = 2560, 9728, 4096, 1024, 151936, 36
    layer = H * q + 2 * H * kv + q * H + 3 * H * I + 2 * H + 2 * 128
    assert memory.ModelShape.from_config(CONFIG_JSON["Qwen/Qwen3-4B-Base"]).params() == L * layer + V * H + H


@pytest.mark.parametrize("bad,message", [
    ({"model_type": "gpt2"}, "model_type 'gpt2': the plan knows the layers of qwen2, qwen3, llama models"),
    ({"model_type": "qwen2", "hidden_size": 8}, "the model's config.json has no 'num_attention_heads'"),
])
def test_a_config_the_plan_cannot_read_is_one_line(bad, message):
    with pytest.raises(memory.PlanError, match=re.escape(message)):
        memory.ModelShape.from_config(bad)


def test_read_model_config_from_a_directory_holding_only_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(CONFIG_JSON["Qwen/Qwen2.5-Math-7B"]))
    assert memory.read_model_config(tmp_path / "m") == CONFIG_JSON["Qwen/Qwen2.5-Math-7B"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(memory.PlanError, match="holds no config.json"):
        memory.read_model_config(tmp_path / "empty")


# ---- activations: fake tensors against real runs

TINY = {"qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, num_hidden_layers=2, vocab_size=320,
                      tie_word_embeddings=True),
        "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, num_hidden_layers=2, vocab_size=288,
                      tie_word_embeddings=False),
        "llama": dict(model_type="llama", hidden_size=96, intermediate_size=128, num_attention_heads=3,
                      num_key_value_heads=1, num_hidden_layers=2, vocab_size=256)}


@pytest.mark.parametrize("kind", list(TINY))
@pytest.mark.parametrize("checkpointing", [True, False])
def test_fake_passes_count_the_bytes_of_real_runs(kind, checkpointing):
    """Under FakeTensorMode the same ops allocate the same outputs as with data: every count equal, bf16 and fp32,
    for the decoder stack and for the LM-head kernel (one chunk and several)."""
    for dtype, layers, rows, width in (("bfloat16", 2, 2, 48), ("float32", 1, 3, 40)):
        fake = memory.stack_pass(TINY[kind], layers, rows, width, dtype, checkpointing)
        real = memory.stack_pass(TINY[kind], layers, rows, width, dtype, checkpointing, real=True)
        assert fake == real, (dtype, fake, real)
        assert fake.layers_peak > fake.held > 0 and fake.embedding_peak > 0
    V, H = TINY[kind]["vocab_size"], TINY[kind]["hidden_size"]
    for tokens in (50, 2**25 // V + 7):  # (chunk: 2**25 // V tokens)
        assert memory.kernel_pass(V, H, tokens, "bfloat16") == memory.kernel_pass(V, H, tokens, "bfloat16", real=True)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_layers_and_rows_extrapolate_to_passes_of_their_own(checkpointing):
    """measure_activations builds L layers and R rows from 1 and 2 of each, and the kernel at any token count from
    one and two chunks: passes of 3 layers and 3 or 4 rows give the same embedding moment, the same kernel moment
    (up to a partial chunk's states), and a layers' moment at most one layer's kept bytes below the plan's (which
    counts every checkpoint alive throughout)."""
    cj, width = dict(TINY["qwen2"], vocab_size=2**16), 256  # the kernel's chunk: 512 tokens
    act = memory.measure_activations(cj, width, "bfloat16", checkpointing, layers=3)
    direct = memory.stack_pass(cj, 3, 3, width, "bfloat16", checkpointing)
    kernel = memory.kernel_pass(cj["vocab_size"], cj["hidden_size"], 3 * width, "bfloat16")
    chunk = 2**25 // cj["vocab_size"]
    assert 3 * width == 1.5 * chunk
    # the kernel: exact where the tokens fill whole chunks; a partial last chunk's float32 states are counted whole
    assert 0 <= act.at("kernel", 3) - (direct.held + kernel.peak) <= chunk * cj["hidden_size"] * 4
    four = memory.stack_pass(cj, 3, 4, width, "bfloat16", checkpointing)
    assert act.at("kernel", 4) == four.held + memory.kernel_pass(cj["vocab_size"], cj["hidden_size"], 4 * width,
                                                                  "bfloat16").peak
    assert act.at("embedding", 3) == direct.embedding_peak
    one, two = (memory.stack_pass(cj, n, 3, width, "bfloat16", checkpointing) for n in (1, 2))
    assert 0 <= act.at("layers", 3) - direct.layers_peak <= two.held - one.held


# ---- host memory: the policy read on rank 0 only

def test_the_policy_read_on_rank_0_equals_every_rank_reading_it(tmp_path):
    """tests/dist_load.py on 2 gloo ranks: policy.load_policy against the load it replaced, bit for bit (shards,
    full tensors, buffers, config, modes; log-probs and gradients of a forward + backward), trainable and not."""
    from tiny import build_tiny_model
    model = build_tiny_model(tmp_path / "model")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29653", "tests/dist_load.py", str(model), str(tmp_path / "out.json")], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert json.loads((tmp_path / "out.json").read_text()) == {"policy": {"differ": [], "parameters": 26},
                                                                "reference": {"differ": [], "parameters": None}}


# ---- the plan

def plan_of(path, world_size, overrides=()):
    cfg = load_config(path, list(overrides))
    return cfg, memory.plan(cfg, CONFIG_JSON[cfg.model.path], world_size, name=str(path))


def term(phase, start):
    (t,) = [t for t in phase.terms if t.name.startswith(start)]
    return t.bytes


def test_the_plans_arithmetic_by_hand():
    """Qwen2.5-Math-1.5B under configs/daro.yaml at 8 GPUs: the state terms as formulas, the rollout's total, the
    engine's KV cache, and the update's total as the sum of its terms."""
    cfg, p = plan_of(CONFIGS / "daro.yaml", 8)
    P, N = 1_543_714_304, 8
    update, rollout = p.phase("update"), p.phase("rollout")
    assert term(update, "float32 master weights") == 4 * P / N
    assert term(update, "AdamW m and v") == 8 * P / N
    assert term(update, "float32 gradients accumulated unsharded") == 4 * P  # grad_sync step: every rank, whole
    assert term(update, "float32 gradients, sharded") == 0  # step: made from the accumulated ones, layer by layer
    assert term(update, "the root gathered") == 2 * (151936 * 1536 + 1536)  # tied: one V x H matrix
    assert update.total() == pytest.approx(sum(t.bytes for t in update.terms))
    assert rollout.total() == 12 * P / N + 0.5 * 80e9 + memory.CUDA_CONTEXT + memory.NCCL_BUFFERS
    kv_per_token = 2 * 28 * 2 * 128 * 2  # K and V, 28 layers, 2 KV heads of 128, bf16
    assert p.kv_tokens == int((0.5 * 80e9 - 2 * P - memory.ENGINE_WORKSPACE) // kv_per_token)
    assert p.phase("sync").total() == max(rollout.total(), sum(t.bytes for t in p.phase("sync").terms))
    _, one = plan_of(CONFIGS / "daro.yaml", 1)
    assert term(one.phase("update"), "float32 master weights") == 4 * P  # one shard holds it all
    _, seven = plan_of(CONFIGS / "7b" / "daro.yaml", 8)  # grad_sync micro_batch: sharded gradients only
    P7 = PARAMS["Qwen/Qwen2.5-Math-7B"]
    assert term(seven.phase("update"), "float32 gradients, sharded") == 4 * P7 / 8
    assert term(seven.phase("update"), "float32 gradients accumulated unsharded") == 0
    # the untied head: the root holds two V x H matrices, and the layer moment the head's gradient in bf16
    assert term(seven.phase("update"), "the root gathered") == 2 * (2 * 152064 * 3584 + 3584)


def test_the_largest_micro_batch_tokens_is_where_the_update_meets_the_limit():
    cfg, p = plan_of(CONFIGS / "7b" / "daro.yaml", 8)
    at = lambda tokens: plan_of(CONFIGS / "7b" / "daro.yaml", 8, [f"micro_batch_tokens={tokens}",  # noqa: E731
                                                                  "micro_batch_size=1000"])[1]
    assert at(p.max_tokens).phase("update").total() <= p.limit() < at(p.max_tokens + 64).phase("update").total()


def gpu_configs():
    """Every config under configs/ for a GPU model (not the tiny or SmolLM2 CPU configs), but base.yaml (the
    methods' shared part, planned through each of them)."""
    paths = sorted(p for p in CONFIGS.glob("**/*.yaml") if p.name != "base.yaml")
    return [p for p in paths if not load_config(p).model.path.startswith(("runs/", "models/", "tiny"))]


def declared_world_size(path):
    """N of the `torchrun --nproc_per_node N` command in the config's header (or its inherit chain's)."""
    import yaml
    for _ in range(10):
        found = re.search(r"--nproc_per_node (\d+)", path.read_text())
        if found:
            return int(found.group(1))
        parent = (yaml.safe_load(path.read_text()) or {}).get("inherit")
        if parent is None:
            return None
        path = path.parent / parent
    return None


def test_the_gpu_configs_are_the_ones_expected():
    names = {str(p.relative_to(CONFIGS)) for p in gpu_configs()}
    methods = ["grpo", "drgrpo", "dapo", "lipo", "gspo", "daro", "grpo_hadw", "gspo_hadw", "dapo_hadw"]
    assert names == {f"{m}.yaml" for m in methods} | {f"7b/{m}.yaml" for m in methods} | {
        "qwen05_gsm8k.yaml", "gspo_hadw_official.yaml"}


@pytest.mark.parametrize("path", gpu_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_gpu_config_fits_at_its_declared_world_size(path):
    n = declared_world_size(path)
    assert n, f"{path.name} declares no world size (a `torchrun --nproc_per_node N` line)"
    cfg, p = plan_of(path, n)
    for phase in p.phases:
        assert phase.total() <= 0.85 * 80e9, (phase.name, phase.total() / GB, memory.advice(p))
    assert p.fits() and p.kv_tokens >= p.width
    # micro_batch_size rows of the widest row fill micro_batch_tokens (else the row cap sets the micro-batch)
    assert cfg.micro_batch_size * p.width >= cfg.micro_batch_tokens


METHODS_7B = ["grpo", "drgrpo", "dapo", "lipo", "gspo", "daro", "grpo_hadw", "gspo_hadw", "dapo_hadw"]


@pytest.mark.parametrize("name", METHODS_7B)
def test_7b_configs_are_the_method_configs_with_the_7bs_differences(name):
    small, big = load_config(CONFIGS / f"{name}.yaml"), load_config(CONFIGS / "7b" / f"{name}.yaml")
    assert (big.model.path, big.grad_sync, big.out_dir) == ("Qwen/Qwen2.5-Math-7B", "micro_batch", f"runs/7b/{name}")
    changed = dataclasses.replace(small, out_dir=big.out_dir, grad_sync=big.grad_sync,
                                  micro_batch_tokens=big.micro_batch_tokens,
                                  model=dataclasses.replace(small.model, path=big.model.path),
                                  rollout=dataclasses.replace(small.rollout,
                                                              gpu_memory_utilization=big.rollout.gpu_memory_utilization))
    assert changed == big  # nothing else differs


def test_the_7b_with_the_1_5b_settings_does_not_fit_and_the_plan_says_what_to_change():
    """base.yaml's grad_sync step holds 4 B x 7.6B of unsharded gradients on every rank: 8 GPUs need a smaller
    micro-batch; one GPU cannot hold even the state."""
    _, p = plan_of(CONFIGS / "daro.yaml", 8, ["model.path=Qwen/Qwen2.5-Math-7B"])
    assert not p.fits() and p.phase("update").total() > 0.85 * 80e9
    assert term(p.phase("update"), "float32 gradients accumulated unsharded") == 4 * PARAMS["Qwen/Qwen2.5-Math-7B"]
    assert memory.advice(p).endswith(f"set micro_batch_tokens={p.max_tokens // 4096 * 4096}")
    _, one = plan_of(CONFIGS / "7b" / "daro.yaml", 1)
    assert not one.fits() and one.phase("rollout").total() > 12 * PARAMS["Qwen/Qwen2.5-Math-7B"]
    assert "run on 4 GPUs" in memory.advice(one)


def memory_plan_cli(tmp_path, model, *args):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text(json.dumps(CONFIG_JSON[model]))  # no weights
    return subprocess.run([sys.executable, "train.py", "--memory-plan", "--model-config", str(tmp_path / "model"),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_train_py_memory_plan(tmp_path):
    run = memory_plan_cli(tmp_path, "Qwen/Qwen2.5-0.5B-Instruct", "--config", "configs/qwen05_gsm8k.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "memory plan: fits" and "world size 1, 80.0 GB per GPU" in run.stdout
    assert re.match(r"largest micro_batch_tokens with 15% headroom: [\d,]+ \(\d+ rows of 1536\)", lines[-2])
    for phase in ("rollout:", "update:", "sync:"):
        assert phase in lines
    assert any("KL reference" in line and "[arithmetic]" in line for line in lines)
    assert any("[assumption]" in line for line in lines) and any("[measured]" in line for line in lines)
    # the 7B with the 1.5B's grad_sync: exit 1, and one line naming the key
    run = memory_plan_cli(tmp_path, "Qwen/Qwen2.5-Math-7B", "--config", "configs/7b/daro.yaml", "--world-size", "8",
                          "grad_sync=step")
    assert run.returncode == 1
    assert re.fullmatch(r"memory plan: does not fit 80 GB with 15% headroom at world size 8: the update needs "
                        r"[\d.]+ GB; set micro_batch_tokens=\d+", run.stdout.splitlines()[-1])


def test_a_run_the_plan_refuses_stops_in_one_line(monkeypatch):
    """memory.check, as train.train calls it on CUDA before any model is built (train.py adds the override flag)."""
    cfg = load_config(CONFIGS / "7b" / "daro.yaml")
    monkeypatch.setattr(memory, "read_model_config", lambda path: CONFIG_JSON[str(path)])
    assert memory.check(cfg, 8, 80e9).fits()
    with pytest.raises(memory.PlanError) as e:
        memory.check(cfg, 2, 80e9)
    assert "\n" not in str(e.value) and "run on 4 GPUs" in str(e.value)
    assert "--skip-memory-check" in (ROOT / "train.py").read_text()


# ---- gpu_check --real-shape: plan against measurement

def test_gpu_check_fails_a_phase_above_its_plan_by_more_than_10_percent():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check
    _, p = plan_of(CONFIGS / "daro.yaml", 8)
    gib = 2**30

    def mem(update=1.0, rollout=1.0, split=0.25):
        """diagnostics' GiB per phase whose measured total is the plan's x the factor; `split` of it outside the
        allocator (device_used - allocated)."""
        out = {}
        for phase, names, factor in (("rollout", ["rollout"], rollout), ("update", ["longest_micro_batch", "train"],
                                                                         update), ("sync", ["sync"], 1.0)):
            total = p.phase(phase).total() * factor / gib
            for i, name in enumerate(names):  # the second record of a phase lower: the phase takes the larger
                t = total * (1 - 0.2 * i)
                out[name] = {"peak": (1 - split) * t, "allocated": 1.0, "reserved": 2.0, "device_used": 1.0 + split * t}
        return out

    lines, ok = gpu_check.compare_memory(p, mem())
    assert ok and len(lines) == 4 and not any("FAIL" in line for line in lines)
    update = next(line for line in lines if line.split()[2] == "update")
    plan_gb, measured_gb, ratio = (float(x) for x in update.split()[3:6])
    assert plan_gb == pytest.approx(p.phase("update").total() / 1e9, abs=0.01) and measured_gb == pytest.approx(
        plan_gb, abs=0.01) and ratio == pytest.approx(1.0, abs=0.01)
    assert gpu_check.compare_memory(p, mem(update=1.09))[1]
    lines, ok = gpu_check.compare_memory(p, mem(update=1.11))
    assert not ok and [line.split()[2] for line in lines if "FAIL" in line] == ["update"]
    assert not gpu_check.compare_memory(p, mem(rollout=1.2, split=0.9))[1]  # the engine's side counts too
    lines, ok = gpu_check.compare_memory(p, {k: None for k in ("rollout", "longest_micro_batch", "train", "sync")})
    assert ok and all("n/a" in line for line in lines[1:])  # no CUDA device: printed, not compared
