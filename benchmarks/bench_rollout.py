"""Samples per second of the two rollout engines, and the time of one sync_weights, on the CPU.

Two random-init models, no hub: the tiny 2-layer model of configs/tiny.yaml, and one with
Qwen2.5-0.5B's shapes (24 layers, hidden 896, 14 heads / 2 KV heads, vocabulary 151,936), both
with the tiny character tokenizer. A random model rarely samples EOS, so nearly every response runs
to --tokens; the table gives generated tokens per second next to samples per second.

    python benchmarks/bench_rollout.py [--prompts 64] [--n 8] [--tokens 16] [--models tiny,0.5b]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tiny import build_tiny_model  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--models", default="tiny,0.5b")
    ap.add_argument("--engines", default="vllm,hf")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    prompts = [f"{i % 10}+{(7 * i) % 10}+{(3 * i) % 10}=" for i in range(args.prompts)]
    rows = []
    for name in args.models.split(","):
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
                      f"{generated / sec:8.1f} tokens/s  sync_weights {sync * 1000:7.1f} ms", flush=True)
    print(f"\n{args.prompts} prompts x {args.n} samples x up to {args.tokens} tokens, float32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"| model | engine | seconds | samples/s | tokens/s | sync_weights ms |\n|---|---|---|---|---|---|")
    for name, kind, sec, sps, tps, sync in rows:
        print(f"| {name} | {kind} | {sec:.2f} | {sps:.1f} | {tps:.1f} | {sync * 1000:.1f} |")


if __name__ == "__main__":
    main()
