"""The tiny task for a first run on a CPU: a random-init 2-layer Qwen2 with a character tokenizer
(no hub needed), and the synthetic "a+b+...=" task it learns in a few minutes.

Used by configs/tiny.yaml (model.path: tiny, data.train: synthetic, reward.kind: first_char), the
tests and the benchmarks. Also the short word problems of configs/smol.yaml (data.train: word_problems),
a task a small pretrained model (SmolLM2-135M-Instruct) partly solves. Nothing here imports the rest of
the project.
"""
import random
import string
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


def word_problem_rows(n, seed, max_steps=3):
    """Short arithmetic word problems with whole-number answers, e.g. "Tom has 3 apples and buys 4 more.
    How many apples does Tom have now?" (7). Level = the number of operations, 1 to max_steps: buying
    more (+), giving some away (-, at least one left), getting k boxes of m (+ k*m). Numbers stay below 200."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name, other = rng.sample(sorted(WORD_PROBLEM_NAMES), 2)
        pronoun, item = WORD_PROBLEM_NAMES[name], rng.choice(WORD_PROBLEM_ITEMS)
        count = rng.randint(2, 20)
        steps = rng.randint(1, max_steps)
        sentences = [f"{name} has {count} {item}"]
        for step in range(steps):
            kind = rng.choice(["buy", "give", "boxes"] if count >= 2 else ["buy", "boxes"])
            if kind == "buy":
                x = rng.randint(1, 20)
                count, phrase = count + x, f"buys {x} more"
            elif kind == "give":
                x = rng.randint(1, count - 1)  # keeps at least one: no "has 0" stories
                count, phrase = count - x, f"gives {x} to {other}"
            else:
                k, m = rng.randint(2, 5), rng.randint(2, 10)
                count, phrase = count + k * m, f"gets {k} boxes with {m} {item} in each box"
            if step == 0:
                sentences[0] += f" and {phrase}."
            else:
                sentences.append(f"Then {pronoun.lower()} {phrase}.")
        sentences.append(f"How many {item} does {name} have now?")
        rows.append({"id": f"word-{seed}-{i}", "problem": " ".join(sentences), "answer": str(count),
                     "level": steps})
    return rows


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
