"""The benchmarks' shared code (benchmarks/common.py, quality.py's compact results): results written whole with their
run environment, one writer per results file, per-user hit ranks that keep every number the tables show, and
measuring scripts that never import the renderers."""

import ast
import json
import random
from pathlib import Path

import pytest

from gti_peft.recsys import evaluate_rankings, per_user_hits

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RENDERING = {"headline"} | {p.stem for p in BENCHMARKS.glob("render_*.py")}
# scripts of work in progress that still edit sys.path: drop each name once it imports common
SYS_PATH_PENDING: set[str] = set()


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    """As when a benchmark runs as `python benchmarks/<name>.py`: its folder is on sys.path."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_measuring_scripts_never_import_rendering():
    measuring = [p for p in BENCHMARKS.glob("*.py") if p.stem not in RENDERING]
    assert len(measuring) > 10
    offenders = {p.name: sorted(_imported_modules(p) & RENDERING) for p in measuring}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_benchmark_edits_sys_path():
    """Benchmarks run as scripts, so their folder is on sys.path already; siblings import each other by name."""
    edits = [p.name for p in BENCHMARKS.glob("*.py") if "sys.path.insert" in p.read_text()]
    assert sorted(set(edits) - SYS_PATH_PENDING) == []


def test_write_result_is_whole_and_records_this_runs_environment(tmp_path):
    from common import load_result, write_result

    path = tmp_path / "nested" / "speed.json"
    assert load_result(path) is None
    write_result(path, {"rows": [1, 2], "date": "1999-01-01", "machine": "an older run's"})
    written = load_result(path)
    assert written["rows"] == [1, 2]
    assert written["date"] != "1999-01-01" and "CPU threads" in written["machine"]  # this run's environment
    assert {"cpu_instruction_sets", "versions", "torch_cpu_capability"} <= set(written)
    assert [p.name for p in path.parent.iterdir()] == ["speed.json"]  # no partial file left behind
    write_result(path, {"rows": [3]}, environment=False)
    assert json.loads(path.read_text()) == {"rows": [3]}


def test_one_writer_per_results_file(tmp_path):
    from common import sole_writer

    path = tmp_path / "quality-cpu.json"
    with sole_writer(path):
        with pytest.raises(RuntimeError, match="another process is writing .*quality-cpu.json"), sole_writer(path):
            pass
        with sole_writer(tmp_path / "quality-other.json"):  # another results file is free
            pass
    with sole_writer(path):  # released with the block
        pass


def _old_format_results(n_users: int = 60, seed: int = 0) -> dict:
    """A quality results file as written before hit ranks: top-20 lists per user, per run and curve point."""
    rng = random.Random(seed)
    items = [f"i{j}" for j in range(40)]
    users = [str(rng.randrange(10_000)) for _ in range(n_users)]  # file order, not sorted
    targets = {u: rng.choice(items) for u in users}

    def rankings(bias: float) -> dict:
        out = {}
        for u in users:
            ranking = rng.sample(items, 20)
            if rng.random() < bias and targets[u] not in ranking:
                ranking[rng.randrange(20)] = targets[u]
            out[u] = ranking
        return out

    runs = {}
    for key, bias in (("mean/seed0", 0.2), ("gti_mean/seed0", 0.4), ("mean/seed1", 0.2), ("gti_mean/seed1", 0.5)):
        ranked = rankings(bias)
        metrics = evaluate_rankings([ranked[u] for u in users], [targets[u] for u in users], ks=(5, 10, 20))
        runs[key] = {"metrics": {"model": metrics}, "rankings": {u: {"target": targets[u], "ranking": ranked[u]}
                                                                 for u in users}}  # fmt: skip
    curve = {"gti_mean/seed0/step50": rankings(0.3), "mean/seed0/step50": rankings(0.1)}
    return {"settings": {"seeds": [0, 1]}, "runs": runs, "curve_rankings": curve}


def test_compact_results_keep_every_metric_and_bootstrap():
    import quality
    from hit_ranks import hits_from_ranks, unpack
    from paired import average_hits, bootstrap_difference

    old = _old_format_results()
    first = next(iter(old["runs"].values()))["rankings"]
    targets = {u: r["target"] for u, r in first.items()}
    # what the bootstraps were computed from before: full lists
    full = {k: per_user_hits({u: r["ranking"] for u, r in run["rankings"].items()}, targets, 10)
            for k, run in old["runs"].items()}  # fmt: skip
    pooled = bootstrap_difference(
        average_hits([full["mean/seed0"], full["mean/seed1"]]),
        average_hits([full["gti_mean/seed0"], full["gti_mean/seed1"]]),
    )
    curve = {k: per_user_hits(r, targets, 10) for k, r in old["curve_rankings"].items()}
    at_step = bootstrap_difference(curve["mean/seed0/step50"], curve["gti_mean/seed0/step50"])

    compact = quality.compact(json.loads(json.dumps(old)))
    assert "curve_rankings" not in compact and all("rankings" not in run for run in compact["runs"].values())
    assert list(quality.user_targets(compact).items()) == list(targets.items())  # the evaluation's user order
    for run in compact["runs"].values():
        ranks = unpack(run["hit_ranks_gz"])
        for k in (5, 10, 20):
            hits = hits_from_ranks(ranks, k).values()
            assert sum(h[0] for h in hits) / len(hits) == pytest.approx(run["metrics"]["model"][f"recall@{k}"])
            assert sum(h[1] for h in hits) / len(hits) == pytest.approx(run["metrics"]["model"][f"ndcg@{k}"])
    again = quality.bootstraps(compact, [0, 1])
    assert {k: v for k, v in again["gti_mean - mean (seeds 0,1)"].items() if k != "seeds"} == pooled
    assert {k: v for k, v in again["gti_mean - mean (seed0, step50)"].items() if k != "seeds"} == at_step
    assert quality.compact(compact) == compact  # compact results pass through


def test_compact_refuses_runs_on_other_targets():
    import quality

    old = _old_format_results()
    run = old["runs"]["mean/seed1"]["rankings"]
    user = next(iter(run))
    run[user]["target"] = "not the others' target"
    with pytest.raises(ValueError, match="test targets differ"):
        quality.compact(old)


@pytest.mark.parametrize("profile", ["cpu", "cpu-long"])
def test_committed_quality_results_reproduce_their_metrics(profile):
    """The committed hit ranks hold every per-user number the docs tables need (recall/NDCG at 5, 10, 20)."""
    from common import load_result
    from hit_ranks import hits_from_ranks, unpack

    results = load_result(f"quality-{profile}")
    assert results["runs"]
    for key, run in results["runs"].items():
        ranks = unpack(run["hit_ranks_gz"])
        assert len(ranks) == run["metrics"]["model"]["n_users"], key
        for k in (5, 10, 20):
            hits = hits_from_ranks(ranks, k).values()
            assert sum(h[0] for h in hits) / len(hits) == pytest.approx(run["metrics"]["model"][f"recall@{k}"]), key
    assert set(results.get("curve_hit_ranks_gz", {})) <= set(results["curve"])


@pytest.mark.parametrize("profile", ["cpu", "cpu-long"])
def test_committed_quality_tables_render_from_the_committed_json(profile):
    """render_quality.py rebuilds quality-<profile>.md byte for byte from the (compact) JSON next to it."""
    from common import RESULTS, load_result
    from render_quality import format_quality

    rendered = format_quality(load_result(f"quality-{profile}")) + "\n"
    assert rendered == (RESULTS / f"quality-{profile}.md").read_text()
