"""A Gradio demo of a trained run: pick watched items by title, get the top-k next items, see the new tokens' plots.

`gti-peft app outputs/smollm2-135m-movielens` starts it. The same file is a Hugging Face Space's `app.py`: with
gti-peft in the Space's requirements and the run folder next to it, it reads the folder from `$GTI_RUN` (default
`run`) or its first argument, and serves on `$GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT` as Spaces expect.
Absolute imports only, so the file runs as a copied `app.py` too; gradio is imported inside the functions.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

COLUMNS = ["rank", "title", "item id", "log-probability"]
TITLE = "gti-peft: what to watch next"


def find_plots(run_folder: str | Path) -> list[tuple[str, str]]:
    """The run's PNG plots (the new tokens' spectrum and cosine structure under `diagnostics/`), with captions."""
    run = Path(run_folder)
    found = sorted(run.glob("diagnostics/*.png")) + sorted(run.glob("*/diagnostics/*.png"))
    captions = {"spectrum": "Singular spectrum of the new rows", "cosine": "Cosine similarity of the new rows"}
    return [(str(path), captions.get(path.stem, path.stem.replace("_", " "))) for path in found]


def item_choices(items: dict[str, str]) -> list[tuple[str, str]]:
    """Dropdown choices `(label, item id)` sorted by title; a title that several items share shows its id."""
    counts = Counter(items.values())
    labels = {item: title if counts[title] == 1 else f"{title} [{item}]" for item, title in items.items()}
    return sorted(((label, item) for item, label in labels.items()), key=lambda pair: pair[0].lower())


def _field(recommendation, name: str):
    return recommendation[name] if isinstance(recommendation, dict) else getattr(recommendation, name)


def recommendation_rows(recommender, history: list[str], k: int) -> list[list]:
    """Table rows (rank, title, item id, log-probability) of the top `k` items after `history`, best first."""
    if not history:
        raise ValueError("Pick at least one watched item: the recommendations follow a history.")
    ranked = recommender.recommend([list(history)], k=int(k), exclude_history=True)[0]
    return [
        [rank, _field(rec, "title") or "", str(_field(rec, "item")), round(float(_field(rec, "score")), 4)]
        for rank, rec in enumerate(ranked, start=1)
    ]


def run_summary(run_folder: str | Path) -> str:
    """One markdown line: the run's recall@10 against popularity, when it has a metrics.json."""
    path = Path(run_folder) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())["metrics"]
    except (OSError, KeyError, ValueError):
        return f"Run folder `{run_folder}`."
    model, popular = metrics["model"], metrics["popularity"]
    key = next((k for k in ("recall@10", "recall@5", "recall@20") if k in model), None)
    if key is None:
        return f"Run folder `{run_folder}`."
    return (
        f"Run folder `{run_folder}`: {key} {model[key]:.3f} against popularity {popular[key]:.3f} on "
        f"{model.get('n_users', '?')} test users."
    )


def build_app(run_folder: str | Path, recommender=None):
    """The `gradio.Blocks` demo of `run_folder` (loads its `Recommender` unless one is given)."""
    import gradio as gr

    if recommender is None:
        from gti_peft.recsys.recommender import Recommender

        recommender = Recommender.from_pretrained(str(run_folder))
    choices = item_choices(dict(recommender.items))

    def recommend(history: list[str] | None, k: float):
        try:
            return recommendation_rows(recommender, list(history or []), int(k))
        except ValueError as error:
            raise gr.Error(str(error)) from error

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{run_summary(run_folder)}")
        with gr.Row():
            with gr.Column(scale=2):
                history = gr.Dropdown(
                    choices=choices,
                    multiselect=True,
                    label="Watched, oldest first (type to find a title)",
                    elem_id="history",
                )
                k = gr.Slider(1, 20, value=10, step=1, label="How many recommendations", elem_id="k")
                button = gr.Button("Recommend", variant="primary", elem_id="recommend")
            with gr.Column(scale=3):
                table = gr.Dataframe(
                    headers=COLUMNS,
                    label="Next items, best first",
                    column_widths=["10%", "55%", "12%", "23%"],
                    wrap=True,
                    elem_id="recommendations",
                )
        button.click(recommend, inputs=[history, k], outputs=table, api_name="recommend")
        plots = find_plots(run_folder)
        if plots:
            gr.Markdown("## The new tokens' geometry\nPlots the run wrote under `diagnostics/`.")
            with gr.Row(elem_id="plots"):
                for path, caption in plots:
                    gr.Image(value=path, label=caption, interactive=False, height=420, format="png")
    return demo


def launch(run_folder: str | Path, host: str = "127.0.0.1", port: int | None = None, block: bool = True, **kwargs):
    """Build and start the demo; with `block=False` return the running `Blocks` (call `.close()` to stop it)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(run_folder, kwargs.pop("recommender", None))
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block, **kwargs)
    return demo


def main(argv: list[str] | None = None) -> None:
    """As a Space's `app.py`: the run folder is the first argument, else `$GTI_RUN`, else `run`."""
    argv = sys.argv[1:] if argv is None else argv
    run_folder = argv[0] if argv else os.environ.get("GTI_RUN", "run")
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    launch(run_folder, host=host, port=port)


if __name__ == "__main__":
    main()
