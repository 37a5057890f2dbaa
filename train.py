"""RLVR training loop (work in progress: the loop lands with its issue)."""
import string
from pathlib import Path


def build_tiny_model(out_dir, *, seed=0, hidden=128, layers=2, heads=2, head_dim=64, max_positions=512):
    """Create a random-init Qwen2 model and a character-level tokenizer in `out_dir` (no hub needed).

    Every printable ASCII character is one token, so any math text round-trips; vLLM and transformers
    both load the result. head_dim 64 because vLLM's CPU attention needs head_dim >= 32.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    specials = ["<pad>", "<eos>", "<unk>"]
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(out_dir)

    config = Qwen2Config(
        vocab_size=128,  # padded above the 102 real tokens, as Qwen pads its embedding matrix
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    return out_dir
