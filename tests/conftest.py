"""Shared fixtures: tiny randomly initialized Llama (and Phi, for an LM-head bias) models built from configs."""

from __future__ import annotations

import copy
import csv
import os
import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gti_peft  # noqa: E402,F401  (registers the method)

VOCAB = 120
NEW_IDS = [120, 121, 122, 123, 124, 125]


def llama_config(tied: bool = True, vocab: int = VOCAB) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )


def tiny_llama(tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(copy.deepcopy(llama_config(tied))).eval()


def tiny_phi(seed: int = 0) -> PhiForCausalLM:
    """Phi has an untied LM head WITH a bias."""
    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return PhiForCausalLM(config).eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def saved_tiny_llama(tmp_path_factory):
    """Folders holding tiny tied / untied Llamas saved with `save_pretrained` (for from_pretrained paths)."""
    folders = {}
    for tied in (True, False):
        folder = tmp_path_factory.mktemp(f"tiny-llama-{'tied' if tied else 'untied'}")
        tiny_llama(tied).save_pretrained(folder)
        folders[tied] = str(folder)
    return folders


@pytest.fixture
def batch():
    # old ids and new ids mixed, two rows
    ids = torch.tensor([[1, 5, 120, 7, 123, 2, 125, 9], [3, 121, 4, 122, 124, 8, 6, 10]])
    return {"input_ids": ids, "labels": ids.clone()}


def smollm2_tokenizer():
    """The real SmolLM2 tokenizer alone (vocabulary and chat template), for tests with tiny models."""
    from transformers import AutoTokenizer

    from gti_peft.assets.offline import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="session")
def tiny_run_files(tmp_path_factory):
    """A tiny Llama with the real SmolLM2 tokenizer, and a synthetic catalog + interaction log as CSV files."""
    root = tmp_path_factory.mktemp("recipe")
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(tied=True, vocab=len(tokenizer))).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    genres = ["comedy", "drama", "horror", "animation", "documentary", "western"]
    with open(root / "items.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title", "description"])
        for i in range(24):
            writer.writerow([f"m{i}", f"Film number {i}", f"A {genres[i % 6]} about topic {i // 6}."])
    rng = random.Random(0)
    with open(root / "interactions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for user in range(12):
            for t, item in enumerate(rng.sample(range(24), 6)):
                writer.writerow([f"u{user}", f"m{item}", 1000 * user + t])
    return root


def tiny_yaml(root: Path, out: Path) -> Path:
    path = root / f"{out.name}.yaml"
    path.write_text(
        f"""# python recipes/gti.py --config {path}
model: {{name_or_path: {root / "model"}}}
data: {{dataset: files, interactions_path: {root / "interactions.csv"}, items_path: {root / "items.csv"},
       max_history: 3, max_length: 96}}
semantic_ids: {{levels: 2, codes_per_level: 4}}
adapter: {{init: mean, r: 2, lora_alpha: 4}}
grounding: {{max_steps: 3, learning_rate: 0.01, per_device_train_batch_size: 4, save_steps: 2, logging_steps: 1,
            bf16: false}}
finetune: {{max_steps: 3, learning_rate: 0.01, per_device_train_batch_size: 4, save_steps: 2, logging_steps: 1,
           bf16: false}}
evaluation: {{num_beams: 5, top_k: 5, max_users: 6, batch_size: 3, bf16: false}}
output: {{output_dir: {out}}}
"""
    )
    return path
