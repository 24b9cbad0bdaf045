"""Start the Gradio demo of a trained run: pick watched items by title, get the top 10, see the new tokens' plots.

Example::

    gti-peft app outputs/smollm2-135m-movielens                 # http://127.0.0.1:7860
    gti-peft app outputs/smollm2-135m-movielens --host 0.0.0.0 --port 8080

Needs the `app` extra (`pip install "gti-peft[app]"`). docs/app.md shows how to run the same app as a Space.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_folder", help="A recipe run's output_dir (or a folder Recommender.from_pretrained loads)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: gradio's, 7860 or the next free).")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link.")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a missing folder or a missing gradio before any model loads."""
    if not Path(args.run_folder).is_dir():
        raise FileNotFoundError(
            f"run_folder {args.run_folder!r} is not a folder: pass a recipe run's output_dir, e.g. "
            "outputs/smollm2-135m-movielens (make demo writes it)."
        )
    if importlib.util.find_spec("gradio") is None:
        raise ModuleNotFoundError('`gti-peft app` needs gradio: pip install "gti-peft[app]" (or pip install gradio).')


def run(args: argparse.Namespace) -> None:
    check_arguments(args)
    from ..recsys.app import launch

    launch(args.run_folder, host=args.host, port=args.port, share=args.share)
