"""`gti-peft diagnostics`: geometry report for the new-token rows of a saved GTI adapter.

Example::

    gti-peft diagnostics outputs/adapter --reference codebooks.pt --out outputs/diag --tokens "<a_1>" "<b_2>"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..training.diagnostics import (
    Rows,
    _sample,
    format_table,
    nearest_tokens_table,
    plot_cosine_matrix,
    plot_spectrum,
    summarize,
)


def load_rows(adapter_dir: str, base_model: str | None = None) -> tuple[list[int], Any, Any, Any, Any]:
    """Load an adapter; return `(new_ids, input_rows, output_rows_or_None, old_rows, tokenizer)`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import gti_peft  # registers the GTI method with PEFT

    from ..assets.offline import resolve  # `offline:*` asset names

    if base_model is None:
        from ..sharing.adapter_format import read_config

        base_model = read_config(adapter_dir)["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(resolve(base_model), dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    ids, input_rows, output_rows = gti_peft.new_token_rows(peft_model)
    old_rows = peft_model.get_input_embeddings().get_base_layer().weight
    return list(ids), input_rows.detach(), output_rows, old_rows.detach(), tokenizer


def load_reference(path: str) -> torch.Tensor:
    """Load reference vectors (`.pt` or `.npy`); `(levels, K, d)` codebooks are stacked by level."""
    ref = np.load(path) if path.endswith(".npy") else torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ref, (list, tuple)):
        ref = torch.cat([torch.as_tensor(np.asarray(r)) for r in ref])
    if not isinstance(ref, (torch.Tensor, np.ndarray)):
        raise ValueError(
            f"--reference {path!r} holds a {type(ref).__name__}; save one tensor (n_tokens, dim), "
            "a (levels, K, dim) tensor, or a list of per-level (K, dim) codebooks."
        )
    ref = torch.as_tensor(np.asarray(ref)) if isinstance(ref, np.ndarray) else ref
    return ref.reshape(-1, ref.shape[-1]) if ref.ndim == 3 else ref


def _pick(ids: list[int], tokenizer: Any, tokens: list[str] | None, n_show: int) -> list[int]:
    """Positions (into `ids`) of the tokens to show: those named, else `n_show` spread over all new tokens."""
    if not tokens:
        return sorted(set(np.linspace(0, len(ids) - 1, min(n_show, len(ids))).round().astype(int).tolist()))
    if tokenizer is None:
        raise ValueError("`tokens` needs a tokenizer to map token strings to ids; pass one or drop `tokens`.")
    pos = {tid: i for i, tid in enumerate(ids)}
    picked = []
    for tok in tokens:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid not in pos:
            raise ValueError(f"token {tok!r} (id {tid}) is not one of the adapter's new tokens; check --tokens.")
        picked.append(pos[tid])
    return picked


def report(
    ids: list[int],
    new_rows: Rows,
    old_rows: Rows,
    tokenizer: Any,
    out_dir: str | Path,
    reference: Rows | None = None,
    output_rows: Rows | None = None,
    top_k: int = 5,
    tokens: list[str] | None = None,
    n_show: int = 8,
    n_old: int = 1000,
) -> dict[str, Any]:
    """Write `spectrum.png`, `cosine.png` and `diagnostics.json` to `out_dir`; return the report.

    `old_rows` is the base embedding matrix indexed by token id (the rows at `ids` are skipped). The
    returned dict holds `summaries`, `table` (text), `nearest` and `text` (all of it, printable).
    """
    if len(ids) != np.shape(new_rows)[0]:
        raise ValueError(f"`ids` has {len(ids)} ids but `new_rows` has {np.shape(new_rows)[0]} rows; align them.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_new = np.zeros(np.shape(old_rows)[0], dtype=bool)
    is_new[ids] = True
    old_ids = np.flatnonzero(~is_new)
    old_sample = old_rows[old_ids[_sample(len(old_ids), n_old, 0).numpy()]]

    stages = {"input rows": new_rows} if output_rows is None else {"input rows": new_rows, "output rows": output_rows}
    summaries = {name: summarize(rows, old_sample, reference) for name, rows in stages.items()}
    summaries["old tokens (sample)"] = summarize(old_sample)
    table = format_table(summaries)

    shown = _pick(ids, tokenizer, tokens, n_show)
    nearest = nearest_tokens_table(
        tokenizer, [ids[i] for i in shown], new_rows[shown], old_rows, k=top_k, exclude_ids=ids
    )
    lines = [table, "", f"Nearest old tokens (input embeddings, top {top_k}):"]
    for tok, neighbours in nearest:
        lines.append(f"  {tok!r}: " + ", ".join(f"{n!r} {c:.3f}" for n, c in neighbours))

    spectrum = plot_spectrum({**stages, "old tokens (sample)": old_sample}, out / "spectrum.png")
    labels = None if tokenizer is None else [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))]
    cosine = plot_cosine_matrix(new_rows, out / "cosine.png", old_rows=old_sample, labels=labels)
    result = {"summaries": summaries, "nearest": nearest, "plots": [str(spectrum), str(cosine)]}
    (out / "diagnostics.json").write_text(json.dumps(result, indent=2))
    lines.append(f"\nWrote {spectrum}, {cosine}, {out / 'diagnostics.json'}")
    return {**result, "table": table, "text": "\n".join(lines)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `gti-diagnostics` / `gti-peft diagnostics`."""
    parser.add_argument("adapter_dir", help="folder of a saved GTI adapter (with tokenizer files)")
    parser.add_argument("--base-model", help="base model id or path (default: adapter_config.json's)")
    parser.add_argument("--reference", help="codebook vectors (.pt or .npy), one row per new token, for RSA")
    parser.add_argument("--out", default="diagnostics", help="output folder (default: ./diagnostics)")
    parser.add_argument("--top-k", type=int, default=5, help="nearest old tokens to list per new token")
    parser.add_argument("--tokens", nargs="+", help="new tokens to list neighbours for (default: a spread of 8)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gti-diagnostics", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    ids, input_rows, output_rows, old_rows, tokenizer = load_rows(args.adapter_dir, args.base_model)
    reference = load_reference(args.reference) if args.reference else None
    result = report(ids, input_rows, old_rows, tokenizer, args.out, reference, output_rows, args.top_k, args.tokens)
    print(result["text"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `gti-diagnostics` console script, kept for one release: `gti-peft diagnostics` is the command."""
    print("`gti-diagnostics` is deprecated and goes in the next release: run `gti-peft diagnostics`.", file=sys.stderr)
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
