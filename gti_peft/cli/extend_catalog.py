"""`gti-peft extend-catalog`: add new items to a trained GTI adapter and save the result as a new adapter folder.

    gti-peft extend-catalog --adapter outputs/smollm2-movielens/adapter --new-items new_movies.csv \\
        --output outputs/smollm2-movielens/adapter-grown --ground-steps 50 --replay items.csv
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options, on `parser` (a sub-command's parser or a fresh one)."""
    parser.add_argument("--adapter", required=True, help="Trained adapter folder (with its semantic_ids.safetensors).")
    parser.add_argument("--new-items", required=True, help="New items' table: CSV/TSV/JSON(L)/Parquet.")
    parser.add_argument("--output", required=True, help="New adapter folder (the original is left untouched).")
    parser.add_argument("--item-column", default="item_id")
    parser.add_argument("--title-column", default="title")
    parser.add_argument("--description-columns", nargs="*", default=["description"])
    parser.add_argument("--ground-steps", type=int, default=0, help="Grounding steps on the rows only (0: none).")
    parser.add_argument("--replay", default=None, help="Old items' table: its pairs are replayed while grounding.")
    parser.add_argument("--replay-ratio", type=float, default=1.0, help="Old pairs per new pair.")
    parser.add_argument("--encoder", default=None, help="Must match the one recorded with the codebooks.")
    parser.add_argument("--base-model", default=None, help="Base to ground on (default: the adapter's).")
    parser.add_argument("--new-row-init", default="level_mean", choices=["level_mean", "mean"])
    parser.add_argument("--templates", nargs="*", default=None, help="Grounding template names (default: all).")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--prompt-style", default=None, help="chat, chat_no_system or plain (default: the adapter's grounding one)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --output folder.")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Extend the catalog as `args` say; print the report (with each new item's semantic ID) and return it."""
    from ..recsys.catalog import extend_catalog

    report = extend_catalog(
        args.adapter,
        args.new_items,
        args.output,
        ground_steps=args.ground_steps,
        replay=args.replay,
        replay_ratio=args.replay_ratio,
        encoder=args.encoder,
        base_model=args.base_model,
        new_row_init=args.new_row_init,
        templates=args.templates,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        prompt_style=args.prompt_style,
        seed=args.seed,
        item_column=args.item_column,
        title_column=args.title_column,
        description_columns=args.description_columns,
        overwrite=args.overwrite,
    ).to_dict()
    # each new item's semantic ID (the item ids are its keys), after the counts and new tokens
    summary = {k: v for k, v in report.items() if k not in ("new_items", "semantic_ids")}
    summary |= {"n_new_items": len(report["new_items"]), "semantic_ids": report["semantic_ids"]}
    print(json.dumps(summary, indent=2))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = add_arguments(
        argparse.ArgumentParser(prog="gti-peft extend-catalog", description=__doc__.splitlines()[0])
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
