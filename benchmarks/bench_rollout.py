"""Samples per second of the two rollout engines, and the time of one sync_weights, on the CPU.

Two random-init models, no hub: the tiny 2-layer model of configs/experiments/tiny.yaml, and one with
Qwen2.5-0.5B's shapes (24 layers, hidden 896, 14 heads / 2 KV heads, vocabulary 151,936), both
with the tiny character tokenizer. A random model rarely samples EOS, so nearly every response runs
to --tokens; the table gives generated tokens per second next to samples per second.

    python benchmarks/bench_rollout.py [--prompts 64] [--n 8] [--tokens 16] [--models tiny,0.5b]

`--models smollm2`: the real SmolLM2-135M-Instruct (smol.py) on GSM8K questions in its chat template
(a fresh slice of prompts per repeat). Besides vLLM vs transformers it times vLLM's seeding schemes
side by side: rollout.py's (one torch seed per call, prefix cache emptied first) against no seed at all
(interleaved, same engine, same prompts), and the old per-request seeds, which run on this CPU build
only with chunked prefill off (a second engine, after the first one is closed).

    python benchmarks/bench_rollout.py --models smollm2 --prompts 8 --n 8 --tokens 64 --repeats 2

--compiled adds vLLM's compiled mode (rollout.enforce_eager=false) on the same prompts, in the same run;
--block128 adds vLLM's CPU default KV block of 128 tokens (rollout.py uses 32 on CPUs, so that a prompt's
samples share its full blocks).
--logprobs times only rollout.py's generate with the sampled tokens' log-probs (as train.py asks, every step)
against without them, beside unseeded vLLM, interleaved on one engine.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tiny import build_tiny_model  # noqa: E402
import rollout  # noqa: E402
from rollout import RolloutConfig, make_engine  # noqa: E402

# Config overrides on top of build_tiny_model's (the tiny model is its output as is).
SHAPES = {
    "tiny": {},
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, head_dim=64, vocab_size=151936),
}


def build(name, out_dir):
    """The tiny tokenizer next to a random-init Qwen2 of the given shapes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    build_tiny_model(out_dir)
    if not SHAPES[name]:
        return Qwen2ForCausalLM.from_pretrained(out_dir)
    cfg = Qwen2Config.from_pretrained(out_dir)
    for k, v in SHAPES[name].items():
        setattr(cfg, k, v)
    cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers  # the config derived it from the tiny depth
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out_dir)
    return model


def time_engine(engine, prompts, n, tokens, repeats):
    engine.generate(prompts[:2], 2, max_tokens=4, seed=0)  # warm-up: first-call compilation, allocations
    seconds, generated = [], 0
    for r in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(prompts, n, max_tokens=tokens, seed=r)
        seconds.append(time.perf_counter() - t0)
        generated = sum(s.length for g in out for s in g)
    return statistics.median(seconds), generated


def load():
    return "load %.1f/%.1f/%.1f" % os.getloadavg()


def gsm8k_prompts(data_dir, count):
    with open(Path(data_dir) / "gsm8k_test.jsonl") as f:
        return [json.loads(line)["problem"] for _, line in zip(range(count), f)]


def vllm_params(n, tokens, seed=None):
    from vllm import SamplingParams
    return SamplingParams(n=n, temperature=1.0, max_tokens=tokens, logprobs=0, seed=seed)


def raw_generate(llm, prompt_ids, params):
    """vLLM as it comes, bypassing rollout.py: returns generated tokens and seconds."""
    from vllm.inputs import TokensPrompt
    t0 = time.perf_counter()
    out = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
    return sum(len(o.token_ids) for r in out for o in r.outputs), time.perf_counter() - t0


def bench_smollm2(args):
    """SmolLM2 on chat-template GSM8K prompts: engines and vLLM seeding schemes, tokens/s."""
    from scripts import smol
    model_dir = str(smol.ensure_smollm2(ROOT / smol.DEFAULT_DIR))
    slices = [gsm8k_prompts(args.data_dir, args.prompts * (args.repeats + 1))[r * args.prompts:(r + 1) * args.prompts]
              for r in range(args.repeats + 1)]  # slice 0 warms up
    cfg = RolloutConfig(engine="vllm", template="chat", temperature=1.0, max_tokens=args.tokens, dtype="float32",
                        max_model_len=1024, hf_batch_size=args.prompts * args.n)
    rows = []  # (label, tokens/s list, load)

    def record(label, runs):
        rates = [tok / sec for tok, sec in runs]
        rows.append((label, statistics.median(rates), min(rates), max(rates), load()))
        print(f"{label:<58} {statistics.median(rates):7.1f} tokens/s (runs {', '.join(f'{x:.1f}' for x in rates)})"
              f"  {load()}", flush=True)

    if "vllm" in args.engines.split(","):
        t0 = time.perf_counter()
        engine = make_engine(cfg, model_dir, seed=0)
        encode = lambda prompts: rollout.encode_prompts(engine.tokenizer, prompts, "chat", engine.max_model_len)
        engine.generate(slices[0][:2], 2, max_tokens=4, seed=0)  # warm-up
        start = time.perf_counter() - t0
        runs = {"seeded": [], "unseeded": [], "no log-probs": []}
        schemes = list(runs) if args.logprobs else ["seeded", "unseeded"]
        for r, prompts in enumerate(slices[1:]):
            for scheme in schemes[r % len(schemes):] + schemes[:r % len(schemes)]:  # rotate the order
                if scheme == "unseeded":  # no seed anywhere; the cache is emptied too, so all start alike
                    engine.llm.reset_prefix_cache()
                    runs[scheme].append(raw_generate(engine.llm, encode(prompts), vllm_params(args.n, args.tokens)))
                else:  # rollout.py: torch seed per call, prefix cache emptied first; log-probs as train.py asks
                    t0 = time.perf_counter()
                    out = engine.generate(prompts, args.n, seed=r, logprobs=scheme == "seeded")
                    runs[scheme].append((sum(s.length for g in out for s in g), time.perf_counter() - t0))
        record(f"vllm, rollout.py seeding (torch seed per call; start-up {start:.0f} s)", runs["seeded"])
        record("vllm, unseeded (same engine, interleaved)", runs["unseeded"])
        if args.logprobs:
            record("vllm, rollout.py seeding without log-probs (same engine, interleaved)", runs["no log-probs"])
        engine.close()
        if args.logprobs:  # the question asked: skip the second engine and the other variants
            return report(args, rows)

        # The old scheme: a seed in every request; on this CPU build only with chunked prefill off.
        import vllm
        kwargs = rollout.vllm_engine_args(cfg, model_dir, 0, on_gpu=False, dtype="float32", distributed=False)
        llm = vllm.LLM(**kwargs, enable_chunked_prefill=False)
        old = []
        for r, prompts in enumerate(slices[1:]):
            llm.reset_prefix_cache()
            params = [vllm_params(args.n, args.tokens, rollout.sampling_seed(r, None, i)) for i in range(len(prompts))]
            old.append(raw_generate(llm, encode(prompts), params))
        record("vllm, old per-request seeds (chunked prefill off)", old)
        rollout._vllm_shutdown(llm, owns_process_group=True)

    def engine_runs(engine_cfg):
        """(tokens, seconds) of rollout.py's generate on each slice, and the engine's start-up seconds."""
        t0 = time.perf_counter()
        engine = make_engine(engine_cfg, model_dir, seed=0)
        engine.generate(slices[0][:2], 2, max_tokens=4, seed=0)  # warm-up (and, compiled, the compilation)
        start, runs = time.perf_counter() - t0, []
        for r, prompts in enumerate(slices[1:]):
            t0 = time.perf_counter()
            out = engine.generate(prompts, args.n, seed=r)
            runs.append((sum(s.length for g in out for s in g), time.perf_counter() - t0))
        engine.close()
        return runs, start

    if args.compiled:  # vLLM's compiled mode (torch.compile of its model) against the eager default above
        runs, start = engine_runs(dataclasses.replace(cfg, enforce_eager=False))
        record(f"vllm compiled (rollout.enforce_eager=false; start-up {start:.0f} s)", runs)
    if args.block128:  # vLLM's CPU default block: no full block in a ~100-token prompt, so no sharing
        runs, start = engine_runs(dataclasses.replace(cfg, block_size=128))
        record("vllm, rollout.block_size=128 (vLLM's CPU default)", runs)
    if "hf" in args.engines.split(","):
        record("transformers generate (hf engine)", engine_runs(dataclasses.replace(cfg, engine="hf"))[0])

    report(args, rows)


def report(args, rows):
    print(f"\nSmolLM2-135M-Instruct float32, chat-template GSM8K prompts: {args.prompts} prompts x {args.n} samples x "
          f"up to {args.tokens} tokens, temperature 1, {args.repeats} repeats (median), {os.cpu_count()} CPUs")
    print("| engine / seeding | tokens/s median | min | max | load after |\n|---|---|---|---|---|")
    for label, med, lo, hi, ld in rows:
        print(f"| {label} | {med:.1f} | {lo:.1f} | {hi:.1f} | {ld} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--models", default="tiny,0.5b", help="tiny, 0.5b (random init) and/or smollm2 (real)")
    ap.add_argument("--engines", default="vllm,hf")
    ap.add_argument("--compiled", action="store_true", help="smollm2: also vLLM's compiled mode (enforce_eager=false)")
    ap.add_argument("--block128", action="store_true", help="smollm2: also vLLM's CPU default KV block (128)")
    ap.add_argument("--logprobs", action="store_true", help="smollm2: only rollout.py's generate with and without "
                    "the sampled tokens' log-probs (train.py asks for them every step), beside unseeded vLLM")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("RLVR_DATA_DIR", str(ROOT / "data")),
                    help="folder with gsm8k_test.jsonl (smollm2; `make data` writes it to data/)")
    args = ap.parse_args()
    print(load(), flush=True)
    models = args.models.split(",")
    if "smollm2" in models:
        bench_smollm2(args)
        models.remove("smollm2")
    prompts = [f"{i % 10}+{(7 * i) % 10}+{(3 * i) % 10}=" for i in range(args.prompts)]
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            model = build(name, tmp)
            for kind in args.engines.split(","):
                cfg = RolloutConfig(engine=kind, template="plain", temperature=1.0, max_tokens=args.tokens,
                                    dtype="float32", hf_batch_size=args.prompts * args.n)
                engine = make_engine(cfg, tmp, seed=0)
                sec, generated = time_engine(engine, prompts, args.n, args.tokens, args.repeats)
                t0 = time.perf_counter()
                engine.sync_weights(model)
                sync = time.perf_counter() - t0
                engine.close()
                samples = args.prompts * args.n
                rows.append((name, kind, sec, samples / sec, generated / sec, sync))
                print(f"{name:>5} {kind:>5}: {sec:6.2f} s  {samples / sec:8.1f} samples/s  "
                      f"{generated / sec:8.1f} tokens/s  sync_weights {sync * 1000:7.1f} ms  {load()}", flush=True)
    if not rows:
        return
    print(f"\n{args.prompts} prompts x {args.n} samples x up to {args.tokens} tokens, float32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print("| model | engine | seconds | samples/s | tokens/s | sync_weights ms |\n|---|---|---|---|---|---|")
    for name, kind, sec, sps, tps, sync in rows:
        print(f"| {name} | {kind} | {sec:.2f} | {sps:.1f} | {tps:.1f} | {sync * 1000:.1f} |")


if __name__ == "__main__":
    main()
