"""Memory: exact chunked statistics without full-matrix copies, the training memory model, the recipe's check."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import NEW_IDS, llama_config, tiny_llama, tiny_phi, tiny_yaml
from peft import PeftModel, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaForCausalLM

from gti_peft import GTIConfig
from gti_peft.method.init import CHUNK_ROWS, OldIds, initial_rows, old_mean
from gti_peft.recipe.config import DataArgs, ModelArgs, RecipeConfig
from gti_peft.recipe.finetune_config import FinetuneConfig
from gti_peft.recipe.memory_check import check_recipe_memory
from gti_peft.training.grounding_config import GroundingConfig
from gti_peft.training.memory import device_memory, estimate_training_memory


class LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any torch op creates while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()] if torch.is_tensor(a)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            new_storage = torch.is_tensor(t) and t.untyped_storage().data_ptr() not in inputs  # not a view, in place
            if new_storage and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_mean_equals_the_old_rows_mean_across_chunk_boundaries():
    weight = torch.randn(103, 16, dtype=torch.float64).to(torch.bfloat16)
    new_inside = [0, 6, 7, 50, 102, 200]  # some new ids inside the old range, at chunk edges, and one beyond it
    old = OldIds(103, new_inside)
    keep = torch.ones(103, dtype=torch.bool)
    keep[[0, 6, 7, 50, 102]] = False
    expected = weight[keep].double().mean(0)
    assert len(old) == 98
    for chunk_rows in (1, 7, 50, 4096):
        torch.testing.assert_close(old_mean(weight, old, chunk_rows).double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("init", ["mean", "hf_mean", "description"])
def test_a_bf16_base_never_gets_a_float32_copy_of_its_matrix(init):
    vocab, hidden = 2 * CHUNK_ROWS + 100, 32
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config(tied=False, vocab=vocab)).to(torch.bfloat16)
    ids = list(range(vocab, vocab + 4))
    descriptions = [[1, 2, 3]] * 4 if init == "description" else None
    with LargestFloat32() as mode:
        model = get_peft_model(base, GTIConfig(new_token_ids=ids, init=init, description_token_ids=descriptions))
    assert mode.largest <= CHUNK_ROWS * hidden < vocab * hidden  # temporaries bounded by the chunk, not the vocab
    rows = model.get_input_embeddings().gti_rows["default"]
    if init == "mean":
        expected = base.get_input_embeddings().weight[:vocab].double().mean(0)
        torch.testing.assert_close(rows[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_mean_rows_match_the_old_rows_mean_within_float32_rounding():
    weight = torch.randn(300, 8)
    rows = initial_rows("mean", weight, OldIds(300, [3, 299]), 2)
    keep = [i for i in range(300) if i not in (3, 299)]
    torch.testing.assert_close(rows, weight[keep].mean(0).expand(2, -1))


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_reload_is_bit_identical(tmp_path, tied):
    config = GTIConfig(new_token_ids=NEW_IDS, init="hf_mean", target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(tiny_llama(tied).to(torch.bfloat16), config)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_llama(tied).to(torch.bfloat16), tmp_path)
    ids = torch.tensor([[1, 120, 5, 125, 9]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_estimate_counts_the_real_models_bytes_and_trainable_parameters():
    config = llama_config(tied=False)
    model = get_peft_model(tiny_llama(tied=False), GTIConfig(new_token_ids=NEW_IDS, r=4, target_modules="all-linear"))
    frozen = [p for p in model.parameters() if not p.requires_grad]
    buffers = [b for name, b in model.named_buffers() if ".gti_" not in name]  # e.g. rotary frequencies
    base_bytes = sum(t.numel() * t.element_size() for t in frozen + buffers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    estimate = estimate_training_memory(config, n_new_tokens=len(NEW_IDS), batch_size=2, seq_len=16, lora_r=4,
                                        dtype="float32")  # fmt: skip
    assert estimate.weights == base_bytes
    assert estimate.trainable == estimate.gradients == 4 * trainable
    assert estimate.optimizer == 8 * trainable  # AdamW: two float32 states
    assert estimate.total == sum(v for k, v in estimate.breakdown().items() if k != "total")
    assert "activations" in estimate.format() and "GB" in estimate.format()


def test_estimate_responds_to_every_setting():
    config = llama_config(vocab=5000)
    kwargs = {"n_new_tokens": 64, "batch_size": 4, "seq_len": 128}
    plain = estimate_training_memory(config, **kwargs)
    double = estimate_training_memory(config, **(kwargs | {"batch_size": 8}))
    assert double.activations == 2 * plain.activations and double.logits == 2 * plain.logits
    assert estimate_training_memory(config, **kwargs, gradient_checkpointing=True).activations < plain.activations
    four_bit = estimate_training_memory(config, **kwargs, load_in_4bit=True, upcast_non_quantized=False)
    assert four_bit.weights < plain.weights
    assert estimate_training_memory(config, **kwargs, optimizer="paged_adamw_8bit").optimizer < plain.optimizer
    assert estimate_training_memory(config, **kwargs, answer_tokens=8).logits < plain.logits
    with pytest.raises(ValueError, match="optimizer"):
        estimate_training_memory(config, **kwargs, optimizer="lion")


def _recipe(tmp_path, batch_size: int, **model_args) -> RecipeConfig:
    llama_config().save_pretrained(tmp_path)  # a config only: the check must not need weights
    return RecipeConfig(
        model=ModelArgs(name_or_path=str(tmp_path), **model_args),
        data=DataArgs(max_length=4096),
        grounding=GroundingConfig(max_steps=0),
        finetune=FinetuneConfig(max_steps=10, per_device_train_batch_size=batch_size),
    )


def test_recipe_check_prints_the_prediction_and_passes_what_fits(tmp_path, capsys):
    estimate = check_recipe_memory(_recipe(tmp_path, batch_size=1), n_new_tokens=6)
    out = capsys.readouterr().out
    assert f"expected peak {estimate.total / 1e9:.1f} GB on cpu" in out and "GB available" in out


def test_recipe_check_refuses_what_cannot_fit_unless_overridden(tmp_path):
    available = device_memory("cpu")[1]
    batch = int(available / 4096 / 1000) + 1  # > 1,000 bytes a token of activations: more than the machine has
    with pytest.raises(ValueError) as error:
        check_recipe_memory(_recipe(tmp_path, batch_size=batch), n_new_tokens=6)
    for setting in ("batch_size", "max_length", "gradient_checkpointing", "load_in_4bit", "ignore_memory_check"):
        assert setting in str(error.value)
    with pytest.warns(UserWarning, match="Running anyway"):
        estimate = check_recipe_memory(_recipe(tmp_path, batch_size=batch, ignore_memory_check=True), 6)
    assert estimate.total > available


def test_an_unqueryable_device_warns_and_skips_the_check(tmp_path, capsys):
    with pytest.warns(UserWarning, match="Could not query"):
        assert device_memory("meta") is None
    with pytest.warns(UserWarning, match="Could not query"):
        estimate = check_recipe_memory(_recipe(tmp_path, batch_size=10**6), n_new_tokens=6, device="meta")
    assert estimate is not None and "device memory unknown" in capsys.readouterr().out


def test_the_recipe_runs_its_memory_check_before_loading_the_model(tiny_run_files, tmp_path):
    """A run whose predicted peak exceeds the machine is refused by `run_recipe` itself, before any training."""
    from gti_peft.recipe import load_recipe_config, run_recipe

    out = tmp_path / "too-big"
    no_weights = tmp_path / "model-without-weights"  # the config and tokenizer only: loading the model would fail
    shutil.copytree(tiny_run_files / "model", no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    available = device_memory("cpu")[1]
    batch = int(available / 96 / 1000) + 1  # > 1,000 bytes a token at max_length 96: more than the machine has
    overrides = [f"finetune.per_device_train_batch_size={batch}", f"model.name_or_path={no_weights}"]
    config = load_recipe_config(tiny_yaml(tiny_run_files, out), overrides)
    with pytest.raises(ValueError, match="predicted to need"):
        run_recipe(config)
    assert not (out / "grounded").exists() and not (out / "adapter").exists()
    assert not (out / "checkpoints-ground").exists()  # refused before the first stage


def _word_tokenizer(size: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), eos_token="t1")


@pytest.mark.parametrize("make_base", [lambda: tiny_llama(tied=True), lambda: tiny_llama(tied=False), tiny_phi])
def test_save_merged_copies_no_vocabulary_sized_matrix_and_serves_the_same_logits(tmp_path, make_base):
    from transformers import AutoModelForCausalLM

    from gti_peft import save_merged

    config = GTIConfig(new_token_ids=NEW_IDS, init="hf_mean", target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(make_base(), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "gti_" in name:
                param.add_(torch.randn_like(param))  # trained rows and bias entries, not their initial values
    embedding = model.get_input_embeddings().base_weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with LargestFloat32() as mode:
        save_merged(model, _word_tokenizer(embedding.shape[0]), tmp_path / "merged")
    assert mode.largest < embedding.numel()  # merged LoRA weights only, never a copy of the embedding or head
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    ids = torch.tensor([[1, 120, 5, 125, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-5)
