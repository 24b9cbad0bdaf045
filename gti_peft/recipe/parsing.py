"""YAML sections into the configs that own them: the stages into `GroundingConfig` and `FinetuneConfig` (by
`HfArgumentParser`), the adapter into `GTIConfig`, the recipe's own sections into typed dataclasses. Those configs' own
checks and defaults are the only ones; this module adds only what the recipe owns and errors that name the key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing

from transformers import HfArgumentParser

from ..method.config import GTIConfig

# stage keys the recipe sets itself, and where to set them instead
RECIPE_OWNED = {"output_dir": "output.output_dir", "seed": "output.seed", "resume_from_checkpoint": "rerunning"}
DATA_OWNED = {"prompt_style": "data.prompt_style", "max_length": "data.max_length"}  # every stage's prompts
RENAMED = {"batch_size": "per_device_train_batch_size"}
MIX_IN_GROUNDING = "grounding.grounding_mix is a fine-tuning key: set finetune.grounding_mix instead."
TEMPLATES_IN_FINETUNE = (
    "finetune.templates is not used: grounding.templates names the templates, for grounding and for "
    "finetune.grounding_mix alike."
)
MOVED = {("grounding", "grounding_mix"): MIX_IN_GROUNDING, ("finetune", "templates"): TEMPLATES_IN_FINETUNE}
# the recipe checkpoints every stage (a rerun resumes where it stopped) and trains in bf16 where that is faster
RECIPE_STAGE_DEFAULTS = {"save_strategy": "steps", "save_steps": 50, "save_total_limit": 2, "bf16": "auto"}
# the recipe's LoRA settings where the YAML is silent (GTIConfig's own defaults are LoraConfig's)
ADAPTER_DEFAULTS = {"lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
ADAPTER_SET_BY_RECIPE = ("new_token_ids", "description_token_ids")
ADAPTER_BOOKKEEPING = (*ADAPTER_SET_BY_RECIPE, "peft_type", "grounding", "base_vocab_size", "vocab_size")
# the recipe's GTIConfig before its tokens exist: `adapter_for` replaces these with the real ids
PLACEHOLDER_IDS, PLACEHOLDER_DESCRIPTIONS = [0], [[1]]


def refuse_unknown(keys, allowed, where: str, what: str) -> None:
    """Every key a section may not hold, named, with the closest allowed names (the one unknown-key error)."""
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        close = [m for key in unknown for m in difflib.get_close_matches(key, sorted(allowed), n=3)]
        hint = f"did you mean {close}?" if close else f"allowed: {sorted(allowed)}."
        raise ValueError(f"Unknown key(s) {unknown} in {where}: not {what} fields; {hint}")


def _coerce_floats(cls, values: dict, where: str) -> dict:
    """YAML reads `1e-3` as a string: float fields given a string get a float (ints stay ints: transformers 4.57
    wants an int `warmup_steps`, which TrainingArguments types as float; anything else is left to its checks)."""
    hints = typing.get_type_hints(cls)
    return {
        k: check_type(v, float, f"{where}.{k}") if hints.get(k) is float and isinstance(v, str) else v
        for k, v in values.items()
    }


def build_stage(cls, values, where: str, owned: dict | None = None):
    """A stage section as `cls` (`GroundingConfig` or `FinetuneConfig`): the recipe's stage defaults, then the YAML's
    values. Keys the recipe sets (`owned`: key -> where to set it), unknown keys and refused values name the key."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}.")
    stage = where.rsplit(".", 1)[-1]
    owned = {**RECIPE_OWNED, **(DATA_OWNED if owned is None else owned)}
    for key in values:
        if key in owned:
            raise ValueError(f"{where}.{key} is set by the recipe: use {owned[key]} instead.")
        if key in RENAMED:
            raise ValueError(f"{where}.{key} is now {RENAMED[key]} (the TrainingArguments name).")
        if (stage, key) in MOVED:
            raise ValueError(MOVED[stage, key])
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    refuse_unknown(values, fields, where, f"{cls.__name__} (transformers.TrainingArguments + {stage}'s own)")
    settings = {**RECIPE_STAGE_DEFAULTS, **_coerce_floats(cls, values, where)}
    try:
        (args,) = HfArgumentParser(cls).parse_dict(settings)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {cls.__name__} refuses these settings: {error}") from error
    return args


def build_adapter(values, where: str) -> GTIConfig:
    """The `adapter:` section as the recipe's `GTIConfig` (placeholder token ids until the tokens exist)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}.")
    if "description_items_per_token" in values:
        raise ValueError(f"{where}.description_items_per_token is now semantic_ids.description_items_per_token.")
    owned = [k for k in values if k in ADAPTER_SET_BY_RECIPE]
    if owned:
        raise ValueError(f"{where}.{owned[0]} is set by the recipe from the semantic IDs: leave it out.")
    fields = {f.name for f in dataclasses.fields(GTIConfig) if f.init} - set(ADAPTER_BOOKKEEPING)
    refuse_unknown(values, fields, where, "GTIConfig")
    hints = typing.get_type_hints(GTIConfig)
    checked = {k: check_type(v, hints[k], f"{where}.{k}") if _simple(hints[k]) else v for k, v in values.items()}
    settings = {**ADAPTER_DEFAULTS, **_coerce_floats(GTIConfig, checked, where), "new_token_ids": PLACEHOLDER_IDS}
    if settings.get("init") == "description":
        settings["description_token_ids"] = PLACEHOLDER_DESCRIPTIONS
    try:  # LoraConfig's field types are beyond HfArgumentParser: built as PEFT builds configs from dicts
        return GTIConfig(**settings)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from error


def adapter_for(template: GTIConfig, new_token_ids: list[int], description_token_ids=None) -> GTIConfig:
    """The recipe's `GTIConfig` for the tokens it added (checked again by `GTIConfig` itself)."""
    return dataclasses.replace(template, new_token_ids=new_token_ids, description_token_ids=description_token_ids)


def _simple(hint) -> bool:
    """int / float / bool / str, optionally `| None`: the hints `check_type` checks in an adapter section."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return all(o in (int, float, bool, str, type(None)) for o in options)


def explicit_settings(config, exclude: tuple = ()) -> dict:
    """The fields of a recipe's `GTIConfig` or stage config that differ from what an empty section parses to
    (YAML-ready): what the section must say to rebuild it. Fields the recipe sets (`exclude`) are left out."""
    if isinstance(config, GTIConfig):
        fresh = build_adapter({}, "adapter")
    else:
        fresh = dataclasses.replace(build_stage(type(config), {}, "stage"), output_dir=config.output_dir)
    defaults = fresh.to_dict()
    return {
        key: sorted(value) if isinstance(value, (set, frozenset)) else value
        for key, value in config.to_dict().items()
        if key not in exclude and value != defaults.get(key)
    }


def check_type(value, hint, where: str):
    """`value` as `hint` (int, float, bool, str, lists and unions of them); the error names the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, where)
            except ValueError as error:
                errors.append(error)
        raise errors[-1]
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{where} must be null, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r} ({type(value).__name__}).")
        (inner,) = typing.get_args(hint)
        return [check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r} ({type(value).__name__}).")
    return value


def build_section(cls, values: dict, where: str):
    """A recipe-owned section (model, data, semantic IDs, evaluation, output) as `cls`, every value type-checked."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}.")
    refuse_unknown(values, {f.name for f in dataclasses.fields(cls)}, where, f"{cls.__name__}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: check_type(value, hints[name], f"{where}.{name}") for name, value in values.items()})
