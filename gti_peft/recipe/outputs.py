"""What a recipe run leaves in `output.output_dir`: its settings, metrics, rankings, plots and the adapter's card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from accelerate import PartialState

from ..method.model import new_token_rows
from ..sharing.hub import push_to_hub, update_card
from ..training import diagnostics
from .config import RecipeConfig, recipe_to_dict

GROUNDED_FOLDER = "grounded"  # where a run saves its adapter after grounding (the pipeline's ground stage)


def prepare_output_dir(config, state: PartialState, task: str = "recommendation") -> Path:
    """Refuse a folder holding something else (or another run's settings) unless `overwrite`; write `recipe.yaml`,
    which reruns as it is (`gti-peft train --config <output_dir>/recipe.yaml`)."""
    out = Path(config.output.output_dir)
    saved = out / "recipe.yaml"
    current = {"task": task, **recipe_to_dict(config)}
    if out.exists() and any(out.iterdir()) and not config.output.overwrite:
        if not saved.exists():
            raise FileExistsError(
                f"output.output_dir={str(out)!r} holds files that are not a GTI recipe run: pick an empty or new "
                "folder, or set output.overwrite: true."
            )
        changed = changed_sections(yaml.safe_load(saved.read_text()) or {}, config, task)
        if changed:
            raise FileExistsError(
                f"output.output_dir={str(out)!r} holds a run with different {changed} settings: resuming would mix "
                "them. Use a new output_dir, or set output.overwrite: true."
            )
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(current, sort_keys=False))
    state.wait_for_everyone()
    return out


def changed_sections(previous: dict, config, task: str) -> list[str]:
    """The sections (output and evaluation aside) whose settings differ from the run saved as `previous`: both read
    by the same parser, so a key left at its default counts as that default. A recipe.yaml an older release wrote
    is compared key by key where it no longer parses."""
    if previous.get("task", "recommendation") != task:
        return ["task"]
    current = recipe_to_dict(config)
    sections = [k for k in current if k not in ("output", "evaluation")]
    values = {k: v for k, v in previous.items() if k != "task"}
    try:
        saved = recipe_to_dict(type(config).from_dict(values, "recipe.yaml"))
    except (ValueError, TypeError):
        return sorted(k for k in sections if _legacy_differs(previous.get(k), _full_section(config, k)))
    return sorted(k for k in sections if saved.get(k) != current[k])


def _full_section(config, name: str):
    section = getattr(config, name)
    return section.to_dict() if hasattr(section, "to_dict") else dataclasses.asdict(section)


def _legacy_differs(previous, current) -> bool:
    """An older recipe.yaml's section against the current values: the keys it has that still exist."""
    if isinstance(previous, dict) and isinstance(current, dict):
        return any(previous[key] != current[key] for key in previous if key in current)
    return previous != current


def plot_rows(model, out: Path) -> None:
    """The new rows' singular spectrum and cosine structure, under `out/diagnostics/`."""
    _, rows, _ = new_token_rows(model)
    rows = rows.detach().float().cpu()
    folder = out / "diagnostics"
    folder.mkdir(exist_ok=True)
    diagnostics.plot_spectrum({"final": rows}, folder / "spectrum.png")
    old = model.get_input_embeddings().base_weight.detach()  # sampled inside: no full-matrix copy
    diagnostics.plot_cosine_matrix(rows, folder / "cosine.png", old_rows=old)


def write_results(config: RecipeConfig, model, tokenizer, results: dict, out: Path, adapter: Path) -> None:
    """metrics.json (and rankings.json), plots, the adapter card with this run's metrics, and the Hub push."""
    rankings = results.pop("rankings", None)
    if rankings is not None:
        (out / "rankings.json").write_text(json.dumps(rankings))  # per-user lists: paired statistics
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    plot_rows(model, out)
    card_metrics = {k: results[k] for k in ("metrics", "table") if k in results} or None
    if card_metrics and adapter.exists():  # the card shows what this adapter scored; the weights stay as saved
        update_card(model, tokenizer, adapter, metrics=card_metrics)
    if config.output.push_to_hub:
        push_to_hub(model, tokenizer, config.output.push_to_hub, metrics=card_metrics)
