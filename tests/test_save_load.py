"""Save / load / merge: only LoRA + new rows are written; reloads on an un-resized base reproduce logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import NEW_IDS, VOCAB, snapshot
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gti_peft import GTIConfig, NewTokenEmbedding

IDS = torch.tensor([[1, 5, 120, 7, 123, 2, 125, 9, 121, 122, 124]])


def trained_gti(folder: str, tied: bool):
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(base, GTIConfig(new_token_ids=NEW_IDS, init="random", r=4, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
    return model.eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("tied", [True, False])
def test_saved_adapter_holds_lora_and_new_rows_only(saved_tiny_llama, tmp_path, tied):
    model = trained_gti(saved_tiny_llama[tied], tied)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    non_lora = {k: tuple(v.shape) for k, v in tensors.items() if "lora_" not in k}
    expected = {"base_model.model.model.embed_tokens.gti_rows": (len(NEW_IDS), 32)}
    if not tied:
        expected["base_model.model.lm_head.gti_rows"] = (len(NEW_IDS), 32)
    assert non_lora == expected
    lora_and_rows = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    raw = (tmp_path / "adapter_model.safetensors").read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert len(raw) - 8 - header == lora_and_rows  # tensor bytes: exactly LoRA + new rows
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "GTI"


@pytest.mark.parametrize("tied", [True, False])
def test_reload_on_unresized_base_reproduces_logits(saved_tiny_llama, tmp_path, tied):
    model = trained_gti(saved_tiny_llama[tied], tied)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(saved_tiny_llama[tied], dtype=torch.float32)
    assert base.get_input_embeddings().weight.shape[0] == VOCAB
    reloaded = PeftModel.from_pretrained(base, tmp_path)
    assert isinstance(reloaded.get_input_embeddings(), NewTokenEmbedding)
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=1e-5)
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(auto.eval()), expected, rtol=0, atol=1e-5)
    assert type(PeftConfig.from_pretrained(tmp_path)) is GTIConfig


def test_reload_in_a_fresh_process(saved_tiny_llama, tmp_path):
    model = trained_gti(saved_tiny_llama[True], True)
    torch.save(logits(model), tmp_path / "expected.pt")
    model.save_pretrained(tmp_path / "adapter")
    script = textwrap.dedent(
        f"""
        import torch, gti_peft
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained({saved_tiny_llama[True]!r}, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
        with torch.no_grad():
            got = model(input_ids=torch.tensor({IDS.tolist()})).logits
        print((got - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


@pytest.mark.parametrize("tied", [True, False])
def test_merge_and_unload_gives_a_plain_extended_model(saved_tiny_llama, tmp_path, tied):
    model = trained_gti(saved_tiny_llama[tied], tied)
    expected = logits(model)
    original = snapshot(AutoModelForCausalLM.from_pretrained(saved_tiny_llama[tied]))
    new_rows = model.get_input_embeddings().gti_rows["default"].detach().clone()
    head_rows = None if tied else model.get_output_embeddings().gti_rows["default"].detach().clone()
    merged = model.merge_and_unload()
    assert type(merged.get_input_embeddings()) is torch.nn.Embedding
    assert merged.config.vocab_size == VOCAB + len(NEW_IDS)
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    assert torch.equal(merged.get_input_embeddings().weight[:VOCAB], original["model.embed_tokens.weight"])
    assert torch.equal(merged.get_input_embeddings().weight[NEW_IDS], new_rows)
    if not tied:  # the untied head: old rows bit-identical, new ids hold the head's own trained rows
        assert torch.equal(merged.get_output_embeddings().weight[:VOCAB], original["lm_head.weight"])
        assert torch.equal(merged.get_output_embeddings().weight[NEW_IDS], head_rows)
    merged.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(logits(plain), expected, rtol=0, atol=1e-5)
    assert (plain.get_output_embeddings().weight is plain.get_input_embeddings().weight) == tied


def test_merge_then_unmerge_restores_the_base_rows(saved_tiny_llama):
    model = trained_gti(saved_tiny_llama[False], False)
    expected = logits(model)
    base_rows = model.get_input_embeddings().base_weight.detach().clone()
    head = model.get_output_embeddings()
    assert not head.is_tied
    head_base_rows = head.base_weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)
    # merged: the untied head's old rows untouched, its new ids hold its own rows
    assert torch.equal(head.base_weight[:VOCAB], head_base_rows[:VOCAB])
    assert torch.equal(head.base_weight[NEW_IDS], head.gti_rows["default"].detach())
    model.unmerge_adapter()
    assert torch.equal(model.get_input_embeddings().base_weight, base_rows)
    # the head's rows are restored too (its logits alone cannot tell: it adds new rows minus base rows)
    assert torch.equal(head.base_weight, head_base_rows)
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)


def test_adapter_folder_lists_no_full_matrices(saved_tiny_llama, tmp_path):
    model = trained_gti(saved_tiny_llama[True], True)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not any(
        "base_layer" in k or k.endswith("embed_tokens.weight")
        for k in load_file(tmp_path / "adapter_model.safetensors")
    )
