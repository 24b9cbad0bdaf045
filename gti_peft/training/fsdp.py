"""FSDP helpers: whether a model is sharded, and gathering its trained parameters into an unsharded copy."""

from __future__ import annotations

import torch


def is_fsdp_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP (1 or 2) wraps `model` or any of its submodules: its parameters are then pieces on each rank."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules())


def copy_trained_parameters(sharded: torch.nn.Module, model: torch.nn.Module) -> list[str]:
    """Gather the trainable parameters of an FSDP-sharded copy of `model` and write them into `model`.

    Call it on every rank (the gathering is collective). `sharded` is the FSDP1 wrapper or the FSDP2
    (`fully_shard`) module; frozen parameters are neither gathered nor touched. Returns the names written.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
    gathered = get_model_state_dict(sharded, options=options)  # clean names, full tensors on every rank
    targets = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # torch drops frozen parameters by their first name only: a tied head's frozen weight comes along, unused
    trained = {name: value for name, value in gathered.items() if name in targets}
    missing = sorted(set(targets) - set(trained))
    if missing:
        raise ValueError(
            f"The sharded model does not mirror `model`: its trainable parameters {missing[:3]} were not gathered. "
            "Pass the FSDP-wrapped copy of this very model, with the same parameters trainable."
        )
    with torch.no_grad():
        for name, value in trained.items():
            targets[name].copy_(value)
    return sorted(trained)
