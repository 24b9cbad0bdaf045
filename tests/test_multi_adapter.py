"""Several GTI adapters on one model: add / set / delete, several active, saving after a delete, safe merging.

The ideas follow PEFT's TrainableTokens multi-adapter tests and PeftCommonTester's delete-adapter and
gradient-checkpointing tests, on the tiny Llama (tied and untied).
"""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, snapshot, tiny_llama
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from gti_peft import GTIConfig, GTIModel
from gti_peft.method.layer import NewTokenLayer

ROWS = VOCAB + 6  # the base is resized once; every adapter's ids fit in it
IDS = {"default": [120, 121, 122], "b": [123, 124, 125], "c": [122, 123]}  # c overlaps both
HIDDEN = 32


def base(tied: bool):
    model = tiny_llama(tied)
    model.resize_token_embeddings(ROWS, mean_resizing=False)
    return model


def config(name: str, **kwargs) -> GTIConfig:
    return GTIConfig(new_token_ids=IDS[name], init="random", r=2, target_modules=["q_proj", "v_proj"], **kwargs)


def model_with(tied: bool, *names: str):
    """A GTI model with adapters `names` (the first one active), each with distinct random rows and LoRA B."""
    model = get_peft_model(base(tied), config(names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config(name))
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".gti_" in n or ".lora_B." in n:
                p.add_(torch.randn_like(p))
    return model.eval()


def layers(model):
    return model.get_input_embeddings(), model.get_output_embeddings()


def own_rows(model, name: str):
    """`(input rows, output rows)` of adapter `name` (the same tensor twice when tied)."""
    embedding, head = layers(model)
    return embedding.gti_rows[name], head.new_rows(name)


def assert_serves(model, expected: dict[str, str | None]):
    """Each adapter's ids are served, in the embedding and the head, by the rows of `expected[adapter]`
    (None: the base rows)."""
    embedding, head = layers(model)
    hidden = torch.randn(3, HIDDEN)
    with torch.no_grad():
        logits = head(hidden)
        for ids_of, served_by in expected.items():
            ids = torch.tensor(IDS[ids_of])
            if served_by is None:
                rows_in, rows_out = embedding.base_weight[ids], head.base_weight[ids]
            else:
                rows_in, rows_out = own_rows(model, served_by)
            torch.testing.assert_close(embedding(ids), rows_in)
            torch.testing.assert_close(logits[:, ids], hidden @ rows_out.T)


def adapter_names_held(model) -> set[str]:
    """Adapter names in any per-adapter container of any tuner layer (as PeftCommonTester checks)."""
    held = set()
    for module in model.modules():
        for attr in getattr(module, "adapter_layer_names", ()) + getattr(module, "other_param_names", ()):
            container = getattr(module, attr, {})
            held.update(container.keys() if hasattr(container, "keys") else ())
    return held


@pytest.mark.parametrize("tied", [True, False])
def test_set_adapter_switches_rows_lora_and_trainability(tied):
    model = model_with(tied, "default", "b")
    assert_serves(model, {"default": "default", "b": None})
    model.set_adapter("b")
    assert_serves(model, {"default": None, "b": "b"})
    assert model.active_adapters == ["b"]
    assert all(layer.active_adapters == ["b"] for layer in layers(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n or n.endswith(".b") for n in trainable)
    assert any("embed_tokens.gti_rows.b" in n for n in trainable)
    model.set_adapter("default")
    assert_serves(model, {"default": "default", "b": None})


@pytest.mark.parametrize("tied", [True, False])
def test_added_adapter_starts_inactive_and_frozen(tied):
    model = model_with(tied, "default", "b")
    rows_b = own_rows(model, "b")
    assert not any(r.requires_grad for r in rows_b)
    assert all(r.requires_grad for r in own_rows(model, "default"))
    assert model.active_adapters == ["default"]


@pytest.mark.parametrize("tied", [True, False])
def test_several_active_adapters_with_disjoint_ids_agree_in_embedding_and_head(tied):
    model = model_with(tied, "default", "b")
    model.base_model.set_adapter(["default", "b"])
    assert_serves(model, {"default": "default", "b": "b"})
    batch = torch.tensor([[1, 120, 124, 5, 122, 123]])
    model.train()
    model(input_ids=batch, labels=batch).loss.backward()
    for name in ("default", "b"):  # both adapters' rows learn
        assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in own_rows(model, name))


@pytest.mark.parametrize("tied", [True, False])
def test_overlapping_adapters_are_refused_together_and_change_nothing(tied):
    model = model_with(tied, "default", "c")
    model.set_adapter("c")  # alone: fine, an alternative set of rows for its ids
    assert_serves(model, {"c": "c"})
    model.set_adapter("default")
    with pytest.raises(ValueError, match=r"'default' and 'c' both have rows for the new token ids \[122\]"):
        model.base_model.set_adapter(["default", "c"])
    assert model.active_adapters == ["default"]
    assert all(layer.active_adapters == ["default"] for layer in layers(model))
    before = snapshot(model)
    with pytest.raises(ValueError, match="cannot be active or merged together"):
        model.base_model.merge_adapter(["default", "c"])
    assert not any(m.merged for m in model.modules() if isinstance(m, NewTokenLayer))
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())


@pytest.mark.parametrize("tied", [True, False])
def test_delete_adapter_removes_its_rows_and_saving_writes_only_the_rest(tied, tmp_path):
    model = model_with(tied, "default", "b")
    model.set_adapter("b")
    model.delete_adapter("default")
    assert "default" not in model.peft_config and model.active_adapters == ["b"]
    assert adapter_names_held(model) == {"b"}
    assert_serves(model, {"default": None, "b": "b"})
    expected = model(input_ids=torch.tensor([[1, 120, 123, 125]])).logits

    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "b" / "adapter_model.safetensors")
    b_numbers = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".b") or ".b." in n)
    assert sum(t.numel() for t in tensors.values()) == b_numbers
    rows = {k: tuple(v.shape) for k, v in tensors.items() if ".gti_" in k}
    expected_rows = {"base_model.model.model.embed_tokens.gti_rows": (3, HIDDEN)}
    if not tied:
        expected_rows["base_model.model.lm_head.gti_rows"] = (3, HIDDEN)
    assert rows == expected_rows
    reloaded = PeftModel.from_pretrained(base(tied), tmp_path / "b", adapter_name="b").eval()
    torch.testing.assert_close(reloaded(input_ids=torch.tensor([[1, 120, 123, 125]])).logits, expected)

    model.delete_adapter("b")  # the last one: the base model runs as it was
    assert model.active_adapters == [] and adapter_names_held(model) == set()
    with torch.no_grad():
        plain = base(tied)(input_ids=torch.tensor([[1, 120, 123]])).logits
        torch.testing.assert_close(model.base_model(input_ids=torch.tensor([[1, 120, 123]])).logits, plain)


def test_deleting_an_inactive_adapter_keeps_the_active_one():
    model = model_with(False, "default", "b")
    model.delete_adapter("b")
    assert model.active_adapters == ["default"] and adapter_names_held(model) == {"default"}
    assert_serves(model, {"default": "default", "b": None})


@pytest.mark.parametrize("tied", [True, False])
def test_safe_merge_of_non_finite_rows_changes_nothing(tied):
    model = model_with(tied, "default")
    _, rows_out = own_rows(model, "default")
    with torch.no_grad():
        rows_out[1, 0] = float("nan")  # untied: the LM head, merged after every LoRA layer
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"NaN or inf in the new-token rows of GTI adapter\(s\) \['default'\]"):
        model.merge_and_unload(safe_merge=True)
    with pytest.raises(ValueError, match="nothing was merged"):
        model.merge_adapter(safe_merge=True)
    embedding, head = layers(model)
    with pytest.raises(ValueError, match="nothing was merged"):
        (embedding if tied else head).merge(safe_merge=True)  # the layer that writes the broken rows
    assert not any(getattr(m, "merged", False) for m in model.modules())
    after = snapshot(model)
    assert after.keys() == before.keys()
    assert all(torch.allclose(before[k], after[k], rtol=0, atol=0, equal_nan=True) for k in before)


def test_gradient_checkpointing_gives_the_same_adapter_gradients():
    """PeftCommonTester's test_training_gradient_checkpointing, on GTI: the same parameters get gradients with and
    without checkpointing, and only adapter parameters: the new rows (GTI's prefix) and LoRA's weights (LoRA's)."""
    model = model_with(False, "default")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    batch = torch.tensor([[1, 120, 5, 122, 121, 7]])
    model.train()
    (model(input_ids=batch).logits ** 2).sum().backward()
    normal = {n for n, p in params if p.grad.abs().sum() > 0}
    normal_grads = {n: p.grad.clone() for n, p in params}
    for _, p in params:
        p.grad = None
    model.prepare_model_for_gradient_checkpointing(model)
    model.gradient_checkpointing_enable({"use_reentrant": True})
    (model(input_ids=batch).logits ** 2).sum().backward()
    assert {n for n, p in params if p.grad.abs().sum() > 0} == normal
    for n, p in params:  # and the same values, not only the same parameters (to float32 rounding of the recompute:
        # transformers 4.57 recomputes in another order, ~3e-7 of the largest gradient; a 1e-3 change fails)
        scale = normal_grads[n].abs().max()
        torch.testing.assert_close(p.grad, normal_grads[n], rtol=1e-5, atol=1e-5 * float(scale), msg=n)
    assert any(GTIModel.prefix in n for n in normal) and any("lora_" in n for n in normal)
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (GTIModel.prefix in n or "lora_" in n), n
