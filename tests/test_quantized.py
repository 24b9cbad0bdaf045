"""A 4-bit bitsandbytes base on CPU: GTI trains, embeddings stay full precision, and eval does not stop training."""

from __future__ import annotations

import bitsandbytes as bnb  # a hard dependency (pyproject): a broken install fails here, never skips
import pytest
import torch
from bitsandbytes.functional import has_avx512bf16
from conftest import NEW_IDS, VOCAB, llama_config
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM

from gti_peft import GTIConfig, new_token_parameters
from gti_peft.training.quantization import guard_cpu_4bit_training, load_4bit_causal_lm

IDS = torch.tensor([[1, 5, 120, 7, 123, 2, 125, 9]])


def step(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    optimizer.zero_grad()
    model(input_ids=IDS, labels=IDS).loss.backward()
    optimizer.step()


def test_4bit_base_trains_lora_and_rows_after_an_evaluation(saved_tiny_llama):
    base = load_4bit_causal_lm(saved_tiny_llama[True], compute_dtype=torch.float32)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    model = get_peft_model(base, GTIConfig(new_token_ids=NEW_IDS, r=4, target_modules="all-linear"))
    assert model.get_input_embeddings().base_weight.dtype == torch.float32
    assert guard_cpu_4bit_training(model) > 0
    # evaluate first (the CPU repacking trap), then train
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=IDS[:, :3], max_new_tokens=2, do_sample=False)
    rows = [p.detach().clone() for p in new_token_parameters(model)]
    base_weight = model.get_input_embeddings().base_weight
    old_rows = base_weight[:VOCAB].detach().clone()
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    step(model)
    assert all(not torch.equal(a, b) for a, b in zip(new_token_parameters(model), rows))
    moved = [n for n, p in model.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert len(moved) == len(lora)
    # the base embedding (old rows included) is frozen: no gradient on the parameter itself, old rows unchanged
    assert not base_weight.requires_grad and base_weight.grad is None
    assert torch.equal(base_weight[:VOCAB], old_rows)


@pytest.fixture(scope="module")
def repackable_llama(tmp_path_factory):
    """A saved tiny Llama whose 4-bit layers bitsandbytes can repack for CPU inference (dimensions multiples of 32
    and 64; the conftest Llama's are too small, so its eval forward never repacks)."""
    config = llama_config(tied=True)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1})
    config.head_dim = 32
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("repackable-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def plain_4bit(folder):
    """A 4-bit base loaded as a user would, with no gti-peft helper."""
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, dtype=torch.float32)


def lora_gradients(model):
    model.train()
    model.zero_grad()
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("wrap", ["get_peft_model", "PeftModel.from_pretrained"])
def test_a_plain_4bit_base_keeps_training_lora_after_an_evaluation(repackable_llama, tmp_path, wrap):
    config = GTIConfig(new_token_ids=NEW_IDS, r=4, target_modules="all-linear")
    if wrap == "get_peft_model":
        model = get_peft_model(plain_4bit(repackable_llama), config)
    else:
        full = AutoModelForCausalLM.from_pretrained(repackable_llama, dtype=torch.float32)
        get_peft_model(full, config).save_pretrained(tmp_path)
        model = PeftModel.from_pretrained(plain_4bit(repackable_llama), tmp_path, is_trainable=True)
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    step(model)  # B leaves zero, so every A gets a gradient from here on
    before_eval = lora_gradients(model)
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=IDS[:, :3], max_new_tokens=2, do_sample=False)
    after_eval = lora_gradients(model)
    assert sorted(after_eval) == sorted(lora), "some LoRA A/B got no gradient after the evaluation"
    assert all(after_eval[n].abs().sum() > 0 for n in lora)
    wrong = [n for n in lora if not torch.allclose(after_eval[n], before_eval[n], rtol=1e-4, atol=1e-7)]
    assert wrong == [], f"{len(wrong)} LoRA gradients changed by an evaluation (bitsandbytes repacked the base)"
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n in lora}
    step(model)
    assert [n for n, p in model.named_parameters() if n in lora and torch.equal(p, weights[n])] == []


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights only on CPUs with avx512_bf16")
def test_a_base_repacked_before_the_adapter_is_refused_for_training(repackable_llama):
    base = plain_4bit(repackable_llama).eval()
    with torch.no_grad():
        base(input_ids=IDS[:, :2])  # old ids only; repacks every Linear4bit
    with pytest.raises(ValueError, match=r"repacked by bitsandbytes .* Load the base again"):
        get_peft_model(base, GTIConfig(new_token_ids=NEW_IDS, r=4, target_modules="all-linear"))
    inference = get_peft_model(base, GTIConfig(new_token_ids=NEW_IDS, r=4, inference_mode=True))
    assert isinstance(inference, PeftModel)
