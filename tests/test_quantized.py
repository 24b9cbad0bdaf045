"""A 4-bit bitsandbytes base on CPU: GTI trains, embeddings stay full precision, and eval does not stop training."""

from __future__ import annotations

import bitsandbytes as bnb  # a hard dependency (pyproject): a broken install fails here, never skips
import torch
from conftest import NEW_IDS, VOCAB
from peft import get_peft_model

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
