"""Sharded training on CPU ranks (gloo): FSDP through the recipe, torch's FSDP1/FSDP2 directly, DeepSpeed ZeRO-2.

What runs on CPU (torch 2.13, accelerate 1.15, transformers 5.x):
- accelerate never selects FSDP for CPU processes (its state keeps MULTI_CPU, so Trainer's `fsdp` options and
  `accelerate launch --config_file fsdp.yaml` silently train with DDP). `python tests/test_sharded.py recipe ...`
  lets accelerate select FSDP there, so the recipe runs its real FSDP2 path: wrapping, sharded checkpoints, saving.
- accelerate's FSDP1 cannot run on CPU even then (its plugin wants a GPU-like device for `sync_module_states`, and
  FSDP1 then refuses `device_id` cpu:0 vs compute device cpu): FSDP1 is tested on torch's own wrapper with PEFT's
  auto-wrap policy, like accelerate wraps PEFT models.
- DeepSpeed runs on CPU in one process only (with two, accelerate counts one process while DeepSpeed counts two and
  refuses the batch size).
The same file is the worker these tests start: `python tests/test_sharded.py MODE ...`.
"""

from __future__ import annotations

import copy
import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import NEW_IDS, tiny_llama, tiny_yaml
from test_reliability import adapter_tensors, assert_same, recipe_command, run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
BIN = Path(sys.executable).parent
NEW_TOKENS = [f"<s_{i}>" for i in range(6)]
STEPS, LR = 3, 1e-2


def _launch(*command: str | Path) -> None:
    run([str(part) for part in command])


def assert_small_adapter(tensors: dict[str, torch.Tensor], hidden: int, new_rows: int) -> None:
    """Only LoRA matrices and the new rows: no full embedding or head, no FSDP names."""
    assert not [k for k in tensors if "_fsdp" in k or "flat_param" in k]
    assert all(".lora_" in k or k.endswith((".gti_rows", ".gti_bias")) for k in tensors), sorted(tensors)
    rows = [v for k, v in tensors.items() if k.endswith(".gti_rows")]
    assert rows and all(tuple(r.shape) == (new_rows, hidden) for r in rows)


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {path.stem: load_config_from_file(str(path)) for path in sorted(CONFIGS.glob("*.yaml"))}
    assert set(configs) == {"deepspeed_zero2", "fsdp", "multi_gpu", "single_gpu"}
    assert configs["fsdp"].fsdp_config["fsdp_version"] == 2  # the version checked below
    assert configs["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2


def test_tie_weights_keeps_a_tied_gti_model_tied(batch):
    # accelerate's FSDP2 preparation (cpu_ram_efficient_loading) reloads the weights, then calls tie_weights(),
    # which assigns `lm_head.weight`: on a GTI model that attribute is the head's wrapped base layer's
    from peft import get_peft_model

    from gti_peft import GTIConfig

    model = get_peft_model(tiny_llama(tied=True), GTIConfig(new_token_ids=NEW_IDS, r=2, target_modules=["q_proj"]))
    before = model(input_ids=batch["input_ids"]).logits
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    head.get_base_layer().weight = torch.nn.Parameter(embedding.base_weight.detach().clone())  # untied
    model.tie_weights()
    assert head.base_weight is embedding.base_weight
    torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits, before, rtol=0, atol=0)


@pytest.mark.slow
def test_fsdp2_recipe_on_two_cpu_ranks_matches_one_process(tiny_run_files, tmp_path):
    single = tmp_path / "single"
    run(recipe_command(tiny_yaml(tiny_run_files, single)))
    sharded = tmp_path / "sharded"
    command = recipe_command(tiny_yaml(tiny_run_files, sharded), "--set", "grounding.per_device_train_batch_size=2")
    command += ["--set", "finetune.per_device_train_batch_size=2", "--set", "output.stages=[ground,finetune,evaluate]"]
    launch = [BIN / "accelerate", "launch", "--config_file", CONFIGS / "fsdp.yaml", "--mixed_precision", "no"]
    _launch(*launch, "--main_process_port", "29534", __file__, "recipe", *command[1:])

    # the Trainer really sharded: its checkpoints are FSDP's sharded state dicts, and hold LoRA + rows only too
    from torch.distributed.checkpoint import FileSystemReader

    checkpoint = sharded / "checkpoints-finetune" / "checkpoint-3" / "pytorch_model_fsdp_0"
    keys = FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    assert keys and all(".lora_" in k or k.endswith(".gti_rows") for k in keys), sorted(keys)
    for folder in ("grounded", "adapter"):
        worst = assert_same(adapter_tensors(single, folder), adapter_tensors(sharded, folder), atol=1e-5)
        print(f"FSDP2, 2 CPU ranks vs 1 process, {folder}: max abs difference {worst:.2e}")
    tensors = adapter_tensors(sharded)
    print(f"saved: {len(tensors)} tensors,", sorted(k for k in tensors if ".lora_" not in k), "and LoRA A/B")
    new_ids = json.loads((sharded / "adapter" / "adapter_config.json").read_text())["new_token_ids"]
    assert_small_adapter(tensors, hidden=32, new_rows=len(new_ids))
    assert "model" in json.loads((sharded / "metrics.json").read_text())["metrics"]  # evaluation ran after FSDP


@pytest.mark.slow
def test_torch_fsdp1_and_fsdp2_train_gather_and_save_like_one_process(tiny_run_files, tmp_path):
    torchrun = [BIN / "torchrun", "--nproc_per_node", "2", "--master_port", "29535"]
    _launch(*torchrun, __file__, "torch-fsdp", tiny_run_files / "model", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results) == ["fsdp1-tied", "fsdp1-untied", "fsdp2-tied", "fsdp2-untied"]
    for name, result in results.items():
        saved = _saved(tmp_path / name)
        print(f"{name}: max abs difference vs 1 process {result['max_diff']:.2e}, saved {sorted(saved)}")
        assert result["max_diff"] <= 1e-5, name
        assert result["moved"] > 1e-3 and result["frozen_unchanged"], name  # every trainable tensor trained
        assert "sharded by FSDP" in result["refused"], name
        assert_small_adapter(saved, hidden=32, new_rows=len(NEW_TOKENS))
        assert sum(k.endswith(".gti_rows") for k in saved) == (1 if name.endswith("-tied") else 2), name


@pytest.mark.slow
def test_deepspeed_zero2_config_prepares_and_trains_a_gti_model(tiny_run_files, tmp_path):
    import deepspeed  # noqa: F401  (in the `test` extra: a missing or broken install fails here, never skips)

    launch = [BIN / "accelerate", "launch", "--config_file", CONFIGS / "deepspeed_zero2.yaml", "--num_processes", "1"]
    launch += ["--mixed_precision", "no", "--main_process_port", "29536"]
    _launch(*launch, __file__, "deepspeed", tiny_run_files / "model", tmp_path)
    result = json.loads((tmp_path / "results.json").read_text())
    print(f"DeepSpeed ZeRO-{result['stage']}: max abs difference vs plain AdamW {result['max_diff']:.2e}")
    assert result["stage"] == 2 and result["engine"] == "DeepSpeedEngine" and result["same_model"]
    assert result["max_diff"] <= 1e-5 and result["moved"] > 1e-3 and result["frozen_unchanged"]
    assert_small_adapter(_saved(tmp_path / "deepspeed"), hidden=32, new_rows=len(NEW_TOKENS))


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


# ---------------------------------------------------------------- workers (run in the launched processes)


def _build(model_dir: Path, tied: bool):
    """A tiny GTI model on the real tokenizer (tied or not), its tokenizer, and a batch of 4 equal-length rows."""
    from conftest import llama_config
    from peft import get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from gti_peft import GTIConfig, add_new_tokens

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config(tied=tied, vocab=len(tokenizer)))
    ids = add_new_tokens(tokenizer, NEW_TOKENS)
    config = GTIConfig(new_token_ids=ids, r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    rows = torch.tensor([[5, ids[0], 17, ids[3], 40, ids[5], 9, 2]] * 4)
    rows[1:, 0] = torch.tensor([11, 12, 13])
    rows[2:, 2] = ids[1]
    return model, tokenizer, rows


def _train(model, rows: torch.Tensor, max_grad_norm: float | None = None) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    for _ in range(STEPS):
        model(input_ids=rows, labels=rows).loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()


def _compare(model, reference, start: dict[str, torch.Tensor]) -> dict:
    """How far `model`'s trained parameters are from `reference`'s, how far they moved, whether frozen ones stayed."""
    expected = dict(reference.named_parameters())
    params = list(model.named_parameters())
    assert {k for k, _ in params} == set(expected)
    # what trains is what the plain reference trains: a parameter frozen along the way must still have moved
    trained = {k for k, p in expected.items() if p.requires_grad}
    return {
        "max_diff": max((p - expected[k]).abs().max().item() for k, p in params if k in trained),
        "moved": min((p - start[k]).abs().max().item() for k, p in params if k in trained),
        "frozen_unchanged": all(torch.equal(p, start[k]) for k, p in params if k not in trained),
    }


def _shard(model, version: int):
    if version == 1:
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp import FullyShardedDataParallel

        # what accelerate does for PEFT models under FSDP1 (use_orig_params: frozen and trainable share units)
        policy = fsdp_auto_wrap_policy(model)
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True, device_id="cpu")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for layer in model.base_model.model.model.layers:  # accelerate's TRANSFORMER_BASED_WRAP, then the root
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _torch_fsdp_worker(model_dir: Path, out: Path) -> None:
    """Per version and tying: train a sharded copy on half the batch per rank, gather into the plain model, save."""
    import torch.distributed as dist

    from gti_peft import save_for_hub
    from gti_peft.training.fsdp import copy_trained_parameters

    dist.init_process_group("gloo")
    rank, results = dist.get_rank(), {}
    for version in (1, 2):
        for tied in (True, False):
            name = f"fsdp{version}-{'tied' if tied else 'untied'}"
            model, tokenizer, rows = _build(model_dir, tied)
            start = {k: v.detach().clone() for k, v in model.named_parameters()}
            reference = copy.deepcopy(model)
            _train(reference, rows)  # one process, the whole batch
            sharded = _shard(copy.deepcopy(model), version)
            _train(sharded, rows[2 * rank : 2 * rank + 2])
            copy_trained_parameters(sharded, model)
            if rank == 0:
                try:
                    save_for_hub(sharded if version == 2 else sharded.module, tokenizer, out / f"{name}-refused")
                    refused = ""
                except ValueError as error:
                    refused = str(error)
                save_for_hub(model, tokenizer, out / name)
                results[name] = _compare(model, reference, start) | {"refused": refused}
            dist.barrier()
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


def _deepspeed_worker(model_dir: Path, out: Path) -> None:
    """accelerate prepares the GTI model with the ZeRO-2 config; the caller's model trains like plain AdamW."""
    from accelerate import Accelerator

    from gti_peft import save_for_hub

    accelerator = Accelerator()
    model, tokenizer, rows = _build(model_dir, tied=True)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    reference = copy.deepcopy(model)
    _train(reference, rows, max_grad_norm=1.0)  # accelerate fills the config's "auto" gradient_clipping with 1.0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    loader = torch.utils.data.DataLoader(rows, batch_size=len(rows))  # DeepSpeed reads the micro batch size here
    engine, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for _ in range(STEPS):
        for batch in loader:
            accelerator.backward(engine(input_ids=batch, labels=batch).loss)
            optimizer.step()
            optimizer.zero_grad()
    save_for_hub(model, tokenizer, out / "deepspeed")
    result = _compare(model, reference, start) | {
        "engine": type(engine).__name__,
        "stage": engine.zero_optimization_stage(),
        "same_model": engine.module is model,
    }
    (out / "results.json").write_text(json.dumps(result))


def _recipe_with_fsdp_on_cpu(script: str, *args: str) -> None:
    """Run `script` where accelerate selects FSDP for CPU processes, as it does for GPUs under the same config."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    init = AcceleratorState.__init__

    def init_with_fsdp(self, *a, fsdp_plugin=None, **kw):
        init(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        wants_fsdp = fsdp_plugin is not None or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if wants_fsdp and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()

    AcceleratorState.__init__ = init_with_fsdp
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    mode, *arguments = sys.argv[1:]
    if mode == "recipe":
        _recipe_with_fsdp_on_cpu(*arguments)
    elif mode == "torch-fsdp":
        _torch_fsdp_worker(Path(arguments[0]), Path(arguments[1]))
    elif mode == "deepspeed":
        _deepspeed_worker(Path(arguments[0]), Path(arguments[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}: use recipe, torch-fsdp or deepspeed")
