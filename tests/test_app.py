"""The Gradio demo of a run: gradio_client against the running app, and headless Chromium picking two items."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import tiny_yaml

from gti_peft.recipe import load_recipe_config, run_recipe
from gti_peft.recsys import app

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("app_screenshot", ROOT / "benchmarks" / "app_screenshot.py")
browser = importlib.util.module_from_spec(spec)
spec.loader.exec_module(browser)


@pytest.fixture(scope="module")
def tiny_run(tiny_run_files, tmp_path_factory):
    """A tiny recipe run (one grounding and one fine-tuning step): adapter, titles, metrics, diagnostics plots."""
    out = tmp_path_factory.mktemp("app") / "run"
    overrides = ["grounding.max_steps=1", "finetune.max_steps=1", "evaluation.max_users=2"]
    run_recipe(load_recipe_config(tiny_yaml(tiny_run_files, out), overrides))
    return out


@pytest.fixture(scope="module")
def recommender(tiny_run):
    from gti_peft.recsys.recommender import Recommender

    return Recommender.from_pretrained(tiny_run)


@pytest.fixture(scope="module")
def app_url(tiny_run, recommender):
    port = browser.free_port()
    demo = app.launch(tiny_run, host="127.0.0.1", port=port, block=False, recommender=recommender)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def expected_rows(recommender, history: list[str], k: int) -> list[list]:
    ranked = recommender.recommend(history, k=k)
    return [[rank, r.title, r.item, round(r.score, 4)] for rank, r in enumerate(ranked, start=1)]


def test_gradio_client_gets_the_top_k_with_titles_and_scores(app_url, recommender):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    table = client.predict(["m1", "m2"], 5, api_name="/recommend")
    assert table["headers"] == app.COLUMNS
    rows = table["data"]
    assert rows == expected_rows(recommender, ["m1", "m2"], 5)
    assert len(rows) == 5 and not {row[2] for row in rows} & {"m1", "m2"}  # the history is left out
    assert all(row[1] == f"Film number {row[2][1:]}" for row in rows)
    scores = [row[3] for row in rows]
    assert scores == sorted(scores, reverse=True) and all(score < 0 for score in scores)
    with pytest.raises(Exception, match="Pick at least one watched item"):
        client.predict([], 5, api_name="/recommend")


def test_the_page_shows_the_runs_plots_and_summary(app_url, tiny_run):
    from gradio_client import Client

    plots = app.find_plots(tiny_run)
    assert [Path(path).name for path, _ in plots] == ["cosine.png", "spectrum.png"]
    components = Client(app_url, verbose=False).config["components"]
    labels = {c.get("props", {}).get("label") for c in components if c.get("type") == "image"}
    assert labels == {caption for _, caption in plots}
    text = json.dumps(components)
    assert "recall@5" in text and "Film number 13" in text  # the run's metrics line and the searchable titles


def test_item_choices_tell_apart_items_that_share_a_title():
    choices = app.item_choices({"1": "Heat (1995)", "2": "Alien (1979)", "3": "Heat (1995)"})
    assert choices == [("Alien (1979)", "2"), ("Heat (1995) [1]", "1"), ("Heat (1995) [3]", "3")]


def test_the_app_file_runs_as_a_copied_space_app_py():
    tree = ast.parse(Path(app.__file__).read_text())
    relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative  # a Space runs the file on its own: absolute imports only
    modules = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    assert "gradio" not in modules  # imported inside the functions that use it


def test_the_command_refuses_a_missing_folder_before_loading_anything(tmp_path):
    from gti_peft.cli import main

    with pytest.raises(FileNotFoundError, match=r"run_folder '.*nowhere' is not a folder"):
        main(["app", str(tmp_path / "nowhere")])


@pytest.mark.skipif(
    browser.browser_paths() is None,
    reason="no headless browser here: apt-get install -y chromium chromium-driver to run the browser test",
)
def test_a_headless_browser_picks_two_movies_and_reads_the_list_back(tiny_run):
    from gradio_client import Client

    port = browser.free_port()
    url = f"http://127.0.0.1:{port}/"
    process = browser.start_space(tiny_run, port, timeout=240)  # the file as a Space runs it: $GTI_RUN, $PORT
    driver = None
    try:
        driver = browser.open_browser()
        chosen, table = browser.pick_and_recommend(driver, url, ["number 7", "number 3"])
        served = Client(url, verbose=False).predict(["m7", "m3"], 10, api_name="/recommend")["data"]
    finally:
        if driver is not None:
            driver.quit()
        browser.stop(process)
    assert chosen == ["Film number 7", "Film number 3"]
    assert table == [[str(cell) for cell in row] for row in served]  # the page shows what the app ranked
    assert [row[0] for row in table] == [str(rank) for rank in range(1, 11)]
    assert not {row[2] for row in table} & {"m7", "m3"}
    assert all(row[1] == f"Film number {row[2][1:]}" for row in table)
