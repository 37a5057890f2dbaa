"""The tiny task for a first run on a CPU: a random-init 2-layer Qwen2 with a character tokenizer
(no hub needed), and the synthetic "a+b+...=" task it learns in a few minutes.

Used by configs/experiments/tiny.yaml (model.path: tiny, data.train: synthetic, reward.kind: first_char), the
tests and the benchmarks. Also the short word problems of configs/experiments/smol.yaml (data.train: word_problems),
a task a small pretrained model (SmolLM2-135M-Instruct) partly solves, and the leveled arithmetic task
of configs/experiments/smol_learn.yaml (data.train: arith; `python tiny.py arith` writes its held-out rows per level).
Nothing here imports the rest of the project.
"""
import dataclasses
import hashlib
import json
import os
import random
import shutil
import string
import time
from dataclasses import dataclass
from pathlib import Path

TINY_CHARS = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")  # any math text
SYNTHETIC_CHARS = "0123456789+="  # the synthetic task's alphabet: a first token is right 1 time in ~16


def synthetic_rows(n, seed):
    """The tiny task: "a+b+...=" with 1-4 single-digit operands; the answer is the sum mod 10,
    i.e. the first generated token. Operand count is the difficulty level."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        digits = [rng.randint(0, 9) for _ in range(rng.randint(1, 4))]
        rows.append({"id": f"synthetic-{seed}-{i}", "problem": "+".join(map(str, digits)) + "=",
                     "answer": str(sum(digits) % 10), "level": len(digits)})
    return rows


def first_char_scores(texts, golds):
    """Reward of the synthetic task: the response starts with the answer (its first token)."""
    return [float(t.startswith(g)) for t, g in zip(texts, golds)]


# name -> pronoun, for the word problems
WORD_PROBLEM_NAMES = {"Tom": "He", "Anna": "She", "Sam": "He", "Lily": "She", "Ben": "He", "Mia": "She",
                      "Leo": "He", "Emma": "She", "Omar": "He", "Sara": "She"}
WORD_PROBLEM_ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "cards"]


def word_problem(rng, max_steps, steps=None):
    """One story of word_problem_rows: (problem, answer, number of operations, terms); `steps` fixes the
    number of operations, else it is drawn from 1..max_steps. `terms` is the story's arithmetic as signed
    terms (see arith_form): the start count, +x per purchase, -x per gift, +k*m per k boxes of m."""
    name, other = rng.sample(sorted(WORD_PROBLEM_NAMES), 2)
    pronoun, item = WORD_PROBLEM_NAMES[name], rng.choice(WORD_PROBLEM_ITEMS)
    count = rng.randint(2, 20)
    steps = rng.randint(1, max_steps) if steps is None else steps
    sentences, terms = [f"{name} has {count} {item}"], [(1, (count,))]
    for step in range(steps):
        kind = rng.choice(["buy", "give", "boxes"] if count >= 2 else ["buy", "boxes"])
        if kind == "buy":
            x = rng.randint(1, 20)
            count, phrase = count + x, f"buys {x} more"
            terms.append((1, (x,)))
        elif kind == "give":
            x = rng.randint(1, count - 1)  # keeps at least one: no "has 0" stories
            count, phrase = count - x, f"gives {x} to {other}"
            terms.append((-1, (x,)))
        else:
            k, m = rng.randint(2, 5), rng.randint(2, 10)
            count, phrase = count + k * m, f"gets {k} boxes with {m} {item} in each box"
            terms.append((1, (k, m)))
        if step == 0:
            sentences[0] += f" and {phrase}."
        else:
            sentences.append(f"Then {pronoun.lower()} {phrase}.")
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), count, steps, terms


def word_problem_rows(n, seed, max_steps=3):
    """Short arithmetic word problems with whole-number answers, e.g. "Tom has 3 apples and buys 4 more.
    How many apples does Tom have now?" (7). Level = the number of operations, 1 to max_steps: buying
    more (+), giving some away (-, at least one left), getting k boxes of m (+ k*m). Numbers stay below 200."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        problem, answer, steps, _ = word_problem(rng, max_steps)
        rows.append({"id": f"word-{seed}-{i}", "problem": problem, "answer": str(answer), "level": steps})
    return rows


# ---------------------------------------------------------------------------------------------
# The leveled arithmetic task for SmolLM2 (data.train: arith, or arith:1-2 for some levels): questions
# a small pretrained model answers more rarely as the level rises, with held-out rows per level that
# training never sees.

ARITH_LEVELS = {
    1: "a + b, one-digit operands",
    2: "a + b or a - b, two-digit operands (never negative)",
    3: "three two-digit operands joined by + and - (every running result >= 0)",
    4: "a two-digit number times a one-digit number (3 to 9)",
    5: "a word problem with two operations (word_problem: buy, give away, boxes of m)",
}
# Held-out rows per level, from their own seed stream. A held-out problem is held out with every form of it:
# training never draws a problem with the same arith_form as a held-out one at any level (3 + 5 for a held-out
# 5 + 3). Level 1 has only 100 distinct problems: its 30 held-out rows (28 forms) cover 54, 46 are left to train on.
ARITH_HELDOUT_SEED = 7_000_005
ARITH_HELDOUT_ROWS = {1: 30, 2: 100, 3: 100, 4: 100, 5: 100}


def arith_form(terms):
    """The canonical form of a problem given as signed terms [(+1 or -1, (factor, ...)), ...]: the sorted
    added terms and the sorted subtracted terms, each term its sorted factors. Problems with the same form
    are the same problem in another order (a + b and b + a; a + b - c and a - c + b; k boxes of m and m
    boxes of k; the names and items of a word problem do not count)."""
    added, subtracted = [], []
    for sign, factors in terms:
        if sign not in (1, -1) or not factors:
            raise ValueError(f"arith terms must be (+1 or -1, (factor, ...)) pairs, got {terms!r}")
        (added if sign == 1 else subtracted).append(tuple(sorted(factors)))
    if not added:
        raise ValueError(f"arith terms must add at least one term, got {terms!r}")
    return tuple(sorted(added)), tuple(sorted(subtracted))


def arith_problem(level, rng):
    """One problem of `level` drawn with `rng` (random.Random): (question, answer as an int, signed terms
    for arith_form)."""
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"What is {a} + {b}?", a + b, [(1, (a,)), (1, (b,))]
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", a + b, [(1, (a,)), (1, (b,))]
        hi, lo = max(a, b), min(a, b)
        return f"What is {hi} - {lo}?", hi - lo, [(1, (hi,)), (-1, (lo,))]
    if level == 3:
        total = rng.randint(10, 99)
        text, terms = str(total), [(1, (total,))]
        for _ in range(2):
            x = rng.randint(10, 99)
            if x <= total and rng.random() < 0.5:
                total, text = total - x, f"{text} - {x}"
                terms.append((-1, (x,)))
            else:
                total, text = total + x, f"{text} + {x}"
                terms.append((1, (x,)))
        return f"What is {text}?", total, terms
    if level == 4:
        a, b = rng.randint(11, 99), rng.randint(3, 9)
        return f"What is {a} * {b}?", a * b, [(1, (a, b))]
    if level == 5:
        problem, answer, _, terms = word_problem(rng, 2, steps=2)
        return problem, answer, terms
    raise ValueError(f"unknown arith level {level!r}; levels are {sorted(ARITH_LEVELS)}")


def arith_heldout_draws(level):
    """The held-out problems of one level as drawn: ARITH_HELDOUT_ROWS[level] distinct questions, each
    (question, answer, terms), the same for every run."""
    if level not in ARITH_LEVELS:
        raise ValueError(f"unknown arith level {level!r}; levels are {sorted(ARITH_LEVELS)}")
    rng = random.Random(ARITH_HELDOUT_SEED + level)
    draws, seen = [], set()
    while len(draws) < ARITH_HELDOUT_ROWS[level]:
        problem, answer, terms = arith_problem(level, rng)
        if problem not in seen:  # distinct questions; two forms of one problem may both be held out
            seen.add(problem)
            draws.append((problem, answer, terms))
    return draws


def arith_heldout_rows(level):
    """The held-out rows of one level (ARITH_HELDOUT_ROWS[level] distinct problems), the same for every run."""
    return [{"id": f"arith-heldout-{level}-{i}", "problem": problem, "answer": str(answer), "level": level}
            for i, (problem, answer, _) in enumerate(arith_heldout_draws(level))]


def arith_heldout_forms():
    """The arith_form of every held-out problem of every level: what training never draws."""
    return {arith_form(terms) for level in ARITH_LEVELS for _, _, terms in arith_heldout_draws(level)}


def parse_levels(spec):
    """'1-3' -> (1, 2, 3); '1,2,5' -> (1, 2, 5); '' -> every level."""
    if not spec:
        return tuple(ARITH_LEVELS)
    levels = []
    for part in spec.split(","):
        lo, dash, hi = part.partition("-")
        if not (lo.strip().isdigit() and (not dash or hi.strip().isdigit())):
            raise ValueError(f"arith levels {spec!r}: write them as 1-3 or 1,2,5")
        levels += range(int(lo), int(hi if dash else lo) + 1)
    unknown = sorted(set(levels) - set(ARITH_LEVELS))
    if unknown or not levels:
        raise ValueError(f"arith levels {spec!r}: no level {unknown or spec}; levels are {sorted(ARITH_LEVELS)}")
    return tuple(sorted(set(levels)))


def arith_rows(n, seed, levels=tuple(ARITH_LEVELS)):
    """Training rows of the leveled arithmetic task: each row's level drawn uniformly from `levels`,
    its problem from the run's seed stream, skipping any problem whose arith_form is held out at any level."""
    heldout = arith_heldout_forms()
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        level = rng.choice(levels)
        problem, answer, terms = arith_problem(level, rng)
        if arith_form(terms) not in heldout:
            rows.append({"id": f"arith-{seed}-{len(rows)}", "problem": problem, "answer": str(answer),
                         "level": level})
    return rows


def write_arith_heldout(out_dir):
    """Each level's held-out rows as JSON Lines, out_dir/level<L>.jsonl (eval.py and eval.benchmarks read
    them by path; every row has its `level`). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for level in ARITH_LEVELS:
        path = out_dir / f"level{level}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in arith_heldout_rows(level)))
        paths.append(path)
    return paths


def build_tiny_model(out_dir, *, chars=TINY_CHARS, seed=0, hidden=128, layers=2, heads=2, head_dim=64,
                     max_positions=512):
    """Create a random-init Qwen2 model and a character-level tokenizer in `out_dir` (no hub needed).

    One token per character of `chars` (ids from 3, after <pad> <eos> <unk>), written as a byte-level
    BPE without merges: transformers 5 loads any qwen2 checkpoint's tokenizer as Qwen2Tokenizer, a
    byte-level BPE, so this is the form that round-trips spaces and newlines there and in vLLM.
    head_dim 64 because vLLM's CPU attention needs head_dim >= 32.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    def byte_level(c):  # GPT-2's byte-to-unicode table: printable ASCII is itself, bytes 0..32 are 256 + b
        return c if 33 <= ord(c) <= 126 else chr(256 + ord(c))

    out_dir = Path(out_dir)
    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [byte_level(c) for c in chars])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    tokenizer.save_pretrained(out_dir)

    config = Qwen2Config(
        vocab_size=-(-len(vocab) // 16) * 16,  # padded to a multiple of 16, as Qwen pads its embedding matrix
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# The boxed task: running sums written out before a \boxed{} answer, scored by verify.py, started
# from a warm-started model (a short supervised pass), so that RL begins in the regime where pass
# rates spread over 0..G and response length depends on difficulty.

BOXED_CHARS = "0123456789+=,\\boxed{}"  # the task's alphabet (set of characters: duplicates are dropped)
BOXED_MIN_TERMS, BOXED_MAX_TERMS = 2, 6


def boxed_solution(digits):
    """The worked answer: one running sum per operand after the first, then the box.
    [3, 5, 8] -> "3+5=8,8+8=16,\\boxed{16}". Length grows by ~7 tokens per operand."""
    steps, total = [], digits[0]
    for d in digits[1:]:
        steps.append(f"{total}+{d}={total + d},")
        total += d
    return "".join(steps) + f"\\boxed{{{total}}}"


def boxed_rows(n, seed, min_terms=BOXED_MIN_TERMS, max_terms=BOXED_MAX_TERMS):
    """Rows of the boxed task: "a+b+...=" with min_terms..max_terms single-digit operands (the level);
    the answer is the plain sum, written by the model as running sums and \\boxed{sum}."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        digits = [rng.randint(0, 9) for _ in range(rng.randint(min_terms, max_terms))]
        rows.append({"id": f"boxed-{seed}-{i}", "problem": "+".join(map(str, digits)) + "=",
                     "answer": str(sum(digits)), "level": len(digits)})
    return rows


# Seeds of the three disjoint row streams: RL training rows come from the run's seed (data.load_rows),
# demonstrations and held-out rows from these fixed ones.
BOXED_DEMO_SEED, BOXED_VAL_SEED = 7_000_001, 7_000_003


@dataclass
class WarmStart:
    """Settings of the warm-started model; the cache directory is keyed by all of them."""
    seed: int = 0
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    head_dim: int = 64          # vLLM's CPU attention needs head_dim >= 32
    steps: int = 400            # SFT optimiser steps: few on purpose, so the model stays imperfect
    batch: int = 64             # demonstrations per step
    lr: float = 3e-3
    warmup: int = 20
    demos: int = 20_000         # distinct demonstrations generated (one epoch is never reached)
    val_rows: int = 200         # held-out rows written to val.jsonl beside the model
    max_positions: int = 128

    def key(self):
        text = (json.dumps(dataclasses.asdict(self), sort_keys=True) + BOXED_CHARS
                + f"{BOXED_MIN_TERMS}-{BOXED_MAX_TERMS}")
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def warm_start_model(out_dir, ws: WarmStart = WarmStart(), log=print):
    """Build (or reuse) the warm-started model of the boxed task in `out_dir`: a random-init tiny
    Qwen2, then `ws.steps` steps of supervised fine-tuning on generated demonstrations
    (problem -> running sums + \\boxed{answer} + EOS; loss on response tokens only, mean per token
    over the batch, float32). Also writes `val.jsonl` (held-out rows for eval.benchmarks) and
    `warm_start.json` (the settings). An existing directory with the same settings is reused; one
    with other settings is rebuilt. Returns the directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    stamp = out_dir / "warm_start.json"
    settings = {**dataclasses.asdict(ws), "key": ws.key()}
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and (out_dir / "val.jsonl").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")  # built aside, renamed when complete
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_model(tmp, chars="".join(dict.fromkeys(BOXED_CHARS)), seed=ws.seed, hidden=ws.hidden,
                     layers=ws.layers, heads=ws.heads, head_dim=ws.head_dim, max_positions=ws.max_positions)
    tok = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    demos = []
    for r in boxed_rows(ws.demos, BOXED_DEMO_SEED + ws.seed):
        p = tok(r["problem"])["input_ids"]
        s = tok(boxed_solution([int(c) for c in r["problem"][:-1].split("+")]))["input_ids"] + [tok.eos_token_id]
        demos.append((p, s))
    torch.manual_seed(ws.seed)
    gen = torch.Generator().manual_seed(ws.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: on a busy machine contended threads spin (benchmarks/README.md)
    opt = torch.optim.AdamW(model.parameters(), lr=ws.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / ws.warmup))
    model.train()
    t0 = time.perf_counter()
    for step in range(ws.steps):
        idx = torch.randint(len(demos), (ws.batch,), generator=gen).tolist()
        width = max(len(demos[i][0]) + len(demos[i][1]) for i in idx)
        ids = torch.full((ws.batch, width), tok.pad_token_id)
        labels = torch.full((ws.batch, width), -100)
        mask = torch.zeros(ws.batch, width, dtype=torch.long)
        for row, i in enumerate(idx):
            p, s = demos[i]
            ids[row, :len(p) + len(s)] = torch.tensor(p + s)
            labels[row, len(p):len(p) + len(s)] = torch.tensor(s)  # right padding: positions start at 0
            mask[row, :len(p) + len(s)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # mean over response tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log and (step + 1) % 50 == 0:
            log(f"warm start: step {step + 1}/{ws.steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    torch.set_num_threads(threads)
    model.save_pretrained(tmp)
    with open(tmp / "val.jsonl", "w") as f:
        for r in boxed_rows(ws.val_rows, BOXED_VAL_SEED + ws.seed):
            f.write(json.dumps(r) + "\n")
    stamp_tmp = tmp / "warm_start.json"
    stamp_tmp.write_text(json.dumps(settings, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def build_synthetic(out_dir, seed=0, val_rows=200):
    """The synthetic task's model (random init, its 12-character alphabet) and its held-out rows
    (synthetic.jsonl, a seed stream apart from training's), as configs/experiments/tiny.yaml reads them."""
    out_dir = Path(out_dir)
    build_tiny_model(out_dir, chars=SYNTHETIC_CHARS, seed=seed)
    with open(out_dir / "synthetic.jsonl", "w") as f:
        for r in synthetic_rows(val_rows, seed + 1_000_003):
            f.write(json.dumps(r) + "\n")
    return out_dir


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Build what the tiny tasks read before training: `synthetic` (the random-init "
                                 "model, held-out synthetic.jsonl beside it), `warmstart` (the boxed task's model, "
                                 "cached by settings), `arith` (the arith task's held-out rows, OUT/level<L>.jsonl).")
    ap.add_argument("command", choices=["synthetic", "warmstart", "arith"])
    ap.add_argument("--out", help="directory (default runs/cache/tiny, runs/cache/boxed, runs/arith: what configs/ read)")
    for f in dataclasses.fields(WarmStart):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)  # --seed: both
    args = ap.parse_args()
    if args.command == "synthetic":
        print(build_synthetic(args.out or "runs/cache/tiny", seed=args.seed))
    elif args.command == "arith":
        for path in write_arith_heldout(args.out or "runs/arith"):
            print(path)
    else:
        ws = WarmStart(**{f.name: getattr(args, f.name) for f in dataclasses.fields(WarmStart)})
        print(warm_start_model(args.out or "runs/cache/boxed", ws))
