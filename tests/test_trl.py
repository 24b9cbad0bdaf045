"""TRL's SFTTrainer on a GTI model (tiny Llama, real SmolLM2 tokenizer): what trains, ties, saves and loads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import llama_config, smollm2_tokenizer
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import LlamaForCausalLM
from trl import SFTConfig, SFTTrainer  # in the `test` extra: a broken install fails here, never skips

from gti_peft import GTIConfig, add_new_tokens, ground
from gti_peft.training.sft import GTISFTTrainer

TOKENS = ["<obdurate>", "<pneumatic>", "<trichromatic>", "<noncommittal>"]
GLOSSES = ["stubbornly persistent", "using air", "having three colors", "refusing to bind oneself"]


@pytest.fixture
def gti_setup(tmp_path):
    return grounded_gti(tmp_path, tied=True)


def grounded_gti(tmp_path, tied: bool):
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(tied=tied, vocab=len(tokenizer))).save_pretrained(tmp_path / "base")
    new_ids = add_new_tokens(tokenizer, TOKENS)
    base = LlamaForCausalLM.from_pretrained(tmp_path / "base")
    model = get_peft_model(
        base,
        GTIConfig(
            new_token_ids=new_ids, init="mean", r=2, lora_alpha=4, target_modules="all-linear", lora_dropout=0.0
        ),
    )
    pairs = [{"tokens": t, "text": g} for t, g in zip(TOKENS, GLOSSES)]
    ground(
        model,
        tokenizer,
        pairs,
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        output_dir=str(tmp_path / "ground"),
    )
    return tokenizer, model, new_ids, tmp_path


def sft_data():
    rows = [{"prompt": f"What does {t} mean?", "completion": f" {g}."} for t, g in zip(TOKENS, GLOSSES)]
    rows += [{"prompt": "Use it in a sentence:", "completion": f" he was {t} about it."} for t in TOKENS]
    return Dataset.from_list(rows)


def sft_config(tmp_path, **extra):
    return SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        **extra,
    )


def test_sft_trains_only_lora_and_new_rows_and_keeps_the_head_tied(gti_setup):
    tokenizer, model, new_ids, tmp_path = gti_setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = GTISFTTrainer(model, sft_config(tmp_path), train_dataset=sft_data(), processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert all("lora_" in n or "gti_rows" in n for n in changed), sorted(changed)
    assert any("gti_rows" in n for n in changed) and any("lora_B" in n for n in changed)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert head.new_rows("default") is embed.gti_rows["default"]  # one set of rows, read by both
    assert head.base_weight.data_ptr() == embed.base_weight.data_ptr()  # the base head is still the tied matrix
    assert "forward" not in model.get_base_model().__dict__  # TRL's fused head (lm_head.weight only) is removed


def full_logits_loss(model, batch) -> torch.Tensor:
    """The labelled tokens' mean cross-entropy from the model's own full logits (its GTI head, no fused head)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def test_sft_loss_goes_through_the_new_rows(gti_setup):
    tokenizer, model, new_ids, tmp_path = gti_setup
    trainer = GTISFTTrainer(model, sft_config(tmp_path), train_dataset=sft_data(), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    assert any(i in batch["labels"] for i in new_ids)  # new tokens are targets, not only inputs
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    rows = model.get_input_embeddings().gti_rows["default"]
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    # Tied rows also get gradients through the input side, so a gradient alone cannot tell whether the head scored
    # the new ids with them: TRL's fused head reads `lm_head.weight` (frozen base rows). The loss and the rows'
    # gradient must be those of the model's own logits, which score the new ids with the new rows.
    trained_grad, rows.grad = rows.grad.clone(), None
    reference = full_logits_loss(model, batch)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(trained_grad, rows.grad)


def test_sft_loss_trains_an_untied_heads_own_rows(tmp_path):
    """Untied, the head owns rows that only the head's logits reach: they must get the loss's gradient."""
    tokenizer, model, new_ids, tmp_path = grounded_gti(tmp_path, tied=False)
    head = model.get_output_embeddings()
    assert not head.is_tied
    trainer = GTISFTTrainer(model, sft_config(tmp_path), train_dataset=sft_data(), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    trainer.compute_loss(model, dict(batch)).backward()
    head_rows = head.gti_rows["default"]
    assert head_rows.grad is not None and head_rows.grad.abs().sum() > 0, "the head's new rows got no gradient"
    trained_grad, head_rows.grad = head_rows.grad.clone(), None
    full_logits_loss(model, batch).backward()
    torch.testing.assert_close(trained_grad, head_rows.grad)


def test_saved_adapter_is_small_and_loads_and_generates(gti_setup):
    tokenizer, model, new_ids, tmp_path = gti_setup
    GTISFTTrainer(model, sft_config(tmp_path), train_dataset=sft_data(), processing_class=tokenizer).train()
    model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    vocab = len(tokenizer)
    assert all(vocab not in t.shape for t in saved.values()), "a full vocabulary matrix was saved"
    assert any(t.shape[0] == len(new_ids) for k, t in saved.items() if "gti_rows" in k)
    model.eval()
    prompt = tokenizer(f"What does {TOKENS[0]} mean?", return_tensors="pt")
    expected = model(**prompt).logits
    loaded = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    torch.testing.assert_close(loaded(**prompt).logits, expected)
    generated = loaded.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 3


def test_stock_sft_trainer_refuses_the_gti_head_and_ours_refuses_its_conflicts(gti_setup):
    tokenizer, model, new_ids, tmp_path = gti_setup
    with pytest.raises(ValueError, match="lm_head"):
        SFTTrainer(model, sft_config(tmp_path), train_dataset=sft_data(), processing_class=tokenizer)
    from peft import LoraConfig

    with pytest.raises(ValueError, match="peft_config"):
        GTISFTTrainer(
            model,
            sft_config(tmp_path),
            train_dataset=sft_data(),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=2),
        )
    with pytest.raises(ValueError, match="chat_template_path"):
        GTISFTTrainer(
            model,
            sft_config(tmp_path, chat_template_path="Qwen/Qwen3-0.6B"),
            train_dataset=sft_data(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="GTI model"):
        GTISFTTrainer(
            model.get_base_model(), sft_config(tmp_path), train_dataset=sft_data(), processing_class=tokenizer
        )
