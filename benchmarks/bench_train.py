"""Seconds per training step on the tiny setting (configs/experiments/tiny.yaml: 32 prompts x 8 samples), with the
time breakdown from metrics.jsonl. Medians over the steps after warm-up.

    python benchmarks/bench_train.py [--steps 40] [--engines vllm,hf] [--max-tokens 1]

--max-tokens 16 makes the rollout matter (a random tiny model rarely stops early).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    ap.add_argument("--engines", default="vllm,hf")
    ap.add_argument("--max-tokens", type=int, default=1, help="response budget (tiny.yaml: 1)")
    args = ap.parse_args()
    rows = []
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            # train.py as users run it; save_every beyond the run: no checkpoint inside the timed steps
            subprocess.run([sys.executable, str(ROOT / "train.py"),
                            "--config", str(ROOT / "configs/experiments/tiny.yaml"),
                            f"out_dir={tmp}", f"steps={args.steps}", f"save_every={10**9}", "eval.every=0",
                            f"rollout.engine={engine}", f"rollout.max_tokens={args.max_tokens}"], check=True)
            recs = [json.loads(l) for l in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][args.warmup:]
        med = lambda k: statistics.median(r[k] for r in recs)
        rows.append((engine, *(med(f"time/{k}") for k in ("step", "rollout", "verify", "train", "sync")),
                     med("tokens_per_s")))
    print(f"\ntiny setting: 32 prompts x 8 samples, max {args.max_tokens} new tokens; "
          f"medians of {args.steps - args.warmup} steps")
    print(f"{'engine':8} {'step s':>8} {'rollout':>8} {'verify':>8} {'train':>8} {'sync':>8} {'tok/s':>8}")
    for r in rows:
        print(f"{r[0]:8} " + " ".join(f"{x:8.3f}" for x in r[1:6]) + f" {r[6]:8.0f}")


if __name__ == "__main__":
    main()
