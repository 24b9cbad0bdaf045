"""The GTI tuner: what trains, what stays frozen, tied vs untied, bias, precision, checkpointing, generate."""

from __future__ import annotations

import pytest
import torch
from conftest import NEW_IDS, VOCAB, snapshot, tiny_llama, tiny_phi
from peft import get_peft_model

from gti_peft import GTIConfig, NewTokenEmbedding, NewTokenLMHead, new_token_parameters, new_token_rows


def gti(model, **kwargs):
    kwargs.setdefault("target_modules", "all-linear")
    return get_peft_model(model, GTIConfig(new_token_ids=NEW_IDS, r=4, lora_alpha=8, **kwargs))


def train_steps(model, batch, steps=3, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("tied", [True, False])
def test_training_moves_lora_and_new_rows_only(tied, batch):
    base = tiny_llama(tied)
    before = snapshot(base)
    model = gti(base)
    rows_before = [p.detach().clone() for p in new_token_parameters(model)]
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    optimizer = train_steps(model, batch)

    # the optimizer holds state for LoRA and the new rows only
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "gti_rows" in n for n in trainable)
    assert sum("gti_rows" in n for n in trainable) == (1 if tied else 2)
    state_shapes = {tuple(s["exp_avg"].shape) for s in optimizer.state.values()}
    assert (VOCAB + len(NEW_IDS), 32) not in state_shapes  # never a vocabulary-sized state
    # LoRA and the rows moved
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if n in lora_before)
    assert all(not torch.equal(a, b) for a, b in zip(new_token_parameters(model), rows_before))
    # every base weight, old embedding rows included, is bit-identical
    unwrapped = model.get_base_model()
    emb = unwrapped.get_input_embeddings().get_base_layer().weight
    assert emb.grad is None
    assert torch.equal(emb[:VOCAB], before["model.embed_tokens.weight"])
    if not tied:
        head = unwrapped.get_output_embeddings().get_base_layer().weight
        assert torch.equal(head[:VOCAB], before["lm_head.weight"])
    for name, tensor in before.items():
        if "embed_tokens" in name or "lm_head" in name:
            continue
        module_name = name.rsplit(".", 1)[0]
        param = unwrapped.get_submodule(module_name)
        param = getattr(getattr(param, "base_layer", param), name.rsplit(".", 1)[1])
        assert torch.equal(param, tensor), name


@pytest.mark.parametrize("tied", [True, False])
def test_tied_models_stay_tied_and_untied_get_head_rows(tied):
    model = gti(tiny_llama(tied))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, NewTokenEmbedding) and isinstance(head, NewTokenLMHead)
    assert head.is_tied == tied
    assert (emb.base_weight is head.base_weight) == tied
    if tied:
        assert head.new_rows("default") is emb.gti_rows["default"]
    ids, input_rows, output_rows = new_token_rows(model)
    assert ids == NEW_IDS and input_rows.shape == (len(NEW_IDS), 32)
    assert (output_rows is None) == tied


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_drive_embedding_and_logits(tied):
    """The new rows are what the model reads (embedding) and writes (logits) for new ids."""
    model = gti(tiny_llama(tied), init="random")
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    ids = torch.tensor([[3, 120, 125]])
    out = emb(ids)
    assert torch.equal(out[0, 0], emb.base_weight[3])
    assert torch.equal(out[0, 1], emb.gti_rows["default"][0])
    assert torch.equal(out[0, 2], emb.gti_rows["default"][5])
    hidden = torch.randn(1, 2, 32)
    logits = head(hidden)
    rows = head.new_rows("default")
    torch.testing.assert_close(logits[..., NEW_IDS], hidden @ rows.T)
    torch.testing.assert_close(logits[..., :VOCAB], hidden @ head.base_weight[:VOCAB].T)


@pytest.mark.parametrize("tied", [True, False])
def test_disabled_adapter_gives_base_outputs_for_old_ids(tied, batch):
    base = tiny_llama(tied)
    old_ids = torch.tensor([[1, 5, 7, 2, 9, 11]])
    with torch.no_grad():
        expected = base(input_ids=old_ids).logits
    model = gti(base, init="random")
    train_steps(model, batch)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        got = model(input_ids=old_ids).logits
    torch.testing.assert_close(got[..., :VOCAB], expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        enabled = model(input_ids=old_ids).logits
    assert not torch.allclose(enabled[..., :VOCAB], expected)  # LoRA did change something
    # training still works after leaving the context
    assert all(p.requires_grad for p in new_token_parameters(model))


def test_lm_head_bias_is_kept_trained_and_merged(batch):
    base = tiny_phi()
    head_bias = base.lm_head.bias.detach().clone()
    model = gti(base, target_modules=["q_proj", "v_proj"])
    head = model.get_output_embeddings()
    assert not head.is_tied and "default" in head.gti_bias
    hidden = torch.randn(1, 3, 32)
    torch.testing.assert_close(head(hidden)[..., :VOCAB], hidden @ head.base_weight[:VOCAB].T + head_bias)
    torch.testing.assert_close(head.gti_bias["default"], head_bias.mean().expand(len(NEW_IDS)))
    train_steps(model, batch)
    assert not torch.allclose(head.gti_bias["default"], head_bias.mean().expand(len(NEW_IDS)))
    trained_bias = head.gti_bias["default"].detach().clone()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
    merged = model.merge_and_unload()
    assert torch.equal(merged.lm_head.bias[:VOCAB], head_bias)
    torch.testing.assert_close(merged.lm_head.bias[NEW_IDS], trained_bias)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=batch["input_ids"]).logits, expected, rtol=0, atol=1e-5)


def _row_gradients(tied: bool, batch: dict, checkpointing: bool) -> list[torch.Tensor]:
    """The new-token parameters' gradients after one backward pass (reentrant checkpointing if asked)."""
    base = tiny_llama(tied)
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model = gti(base)
    model.enable_input_require_grads()
    model.train()
    torch.manual_seed(0)
    model(**batch).loss.backward()
    return [p.grad for p in new_token_parameters(model)]


def test_gradient_checkpointing_trains_rows(batch):
    rows_grad = _row_gradients(True, batch, checkpointing=True)[0]
    assert rows_grad is not None and rows_grad.abs().sum() > 0
    # a new id in the batch gets a gradient (tied: from the embedding and the head)
    assert rows_grad[NEW_IDS.index(125)].abs().sum() > 0
    # checkpointing changes no gradient: the same as a pass without it
    torch.testing.assert_close(rows_grad, _row_gradients(True, batch, checkpointing=False)[0])


@pytest.mark.parametrize("checkpointing", [True, False])
def test_input_rows_get_gradients_exactly_for_the_new_ids_in_the_input(checkpointing):
    """Untied: the embedding's rows learn from the input side only, so an id absent from the input gets none."""
    ids = torch.tensor([[1, 5, 120, 7, 123, 2, 125, 9]])  # new ids 121, 122, 124 absent
    input_grad, head_grad = _row_gradients(False, {"input_ids": ids, "labels": ids}, checkpointing)
    present = [NEW_IDS.index(i) for i in (120, 123, 125)]
    absent = [NEW_IDS.index(i) for i in (121, 122, 124)]
    assert input_grad is not None and head_grad is not None, "a set of new rows got no gradient"
    assert (input_grad[present].abs().sum(-1) > 0).all()
    assert torch.equal(input_grad[absent], torch.zeros_like(input_grad[absent]))
    assert (head_grad.abs().sum(-1) > 0).all()  # every new id's logit is scored: every head row learns


def test_bf16_base_keeps_fp32_rows_and_bf16_outputs(batch):
    model = gti(tiny_llama(True).to(torch.bfloat16))
    rows = new_token_parameters(model)[0]
    assert rows.dtype == torch.float32
    out = model(**batch)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert rows.grad is not None and rows.grad.dtype == torch.float32


def test_generate_can_emit_new_tokens():
    model = gti(tiny_llama(True), init="random")
    with torch.no_grad():
        model.get_input_embeddings().gti_rows["default"][2] *= 200  # make <new 122> dominate the logits
    model.eval()
    out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert 122 in out[0, 3:].tolist()


def test_pad_to_multiple_of_resizes_to_a_multiple():
    model = gti(tiny_llama(False), pad_to_multiple_of=64)
    emb = model.get_input_embeddings().base_weight
    assert emb.shape[0] == 128 and model.config.vocab_size == 128
    # padding rows start at the mean of the old rows, deterministically
    torch.testing.assert_close(emb[127], emb[:VOCAB].mean(0))


def test_new_ids_inside_the_current_vocabulary_need_no_resize():
    base = tiny_llama(True)
    model = get_peft_model(base, GTIConfig(new_token_ids=[100, 101], target_modules="all-linear"))
    assert model.get_input_embeddings().base_weight.shape[0] == VOCAB
    rows = new_token_rows(model)[1]
    old = [i for i in range(VOCAB) if i not in (100, 101)]
    torch.testing.assert_close(rows[0], model.get_input_embeddings().base_weight[old].mean(0))
