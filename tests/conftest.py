"""Shared fixtures: tiny randomly initialized Llama (and Phi, for an LM-head bias) models built from configs."""

from __future__ import annotations

import copy
import os

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
