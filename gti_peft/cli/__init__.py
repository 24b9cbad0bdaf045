"""`gti-peft`: the installed command line. Each subcommand is a module with `add_arguments` and `run`.

gti-peft train --config smollm2-135m/movielens            # a recipe shipped with the package
gti-peft train --config my.yaml --set adapter.init=mean   # or any YAML, with overrides
gti-peft diagnostics outputs/run/adapter --out outputs/diag
gti-peft extend-catalog --adapter outputs/run/adapter --new-items new.csv --output outputs/run/adapter-grown
gti-peft recommend outputs/smollm2-135m-movielens --input histories.jsonl --output recs.jsonl
gti-peft app outputs/smollm2-135m-movielens               # Gradio demo of a run (the `app` extra)
accelerate launch -m gti_peft.cli train --config smollm2-135m/movielens
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module exposing add_arguments(parser) and run(args)
SUBCOMMANDS = {
    "train": "gti_peft.cli.train",
    "diagnostics": "gti_peft.cli.diagnostics",
    "extend-catalog": "gti_peft.cli.extend_catalog",
    "recommend": "gti_peft.cli.recommend",
    "app": "gti_peft.cli.app",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gti-peft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None
        sub = commands.add_parser(name, help=summary, description=module.__doc__)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None):
    """Parse `argv` (default: the command line) and run the subcommand; returns what it returns."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


def console() -> int:
    """The `gti-peft` executable: exit status 0 unless a subcommand returns another int."""
    result = main(sys.argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(console())
