"""Classical baselines (Cornac's SASRec and BPR) on a tiny synthetic log: catalog-wide rankings, no use of the
test targets, seeded repeatability, and the guard that names the missing library."""

import random
import sys
from pathlib import Path

import pytest

from gti_peft.recsys import leave_one_out

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # benchmark-only code, not the package
from baselines import (  # noqa: E402
    BPRConfig,
    SASRecConfig,
    bpr_rankings,
    require_baseline_library,
    sasrec_rankings,
)

# cornac (SASRec, BPR) is installed by `make` (the `baselines` extra): a missing cornac fails here, never skips

N_ITEMS = 12
CATALOG = [f"i{j}" for j in range(N_ITEMS)] + ["never_seen"]  # one item that occurs in no history
FAST_SASREC = SASRecConfig(embedding_dim=16, max_len=8, batch_size=32, n_epochs=30, val_every=10, dropout=0.0)


def successor_histories(n_users: int = 40, length: int = 9, seed: int = 0) -> dict[str, list[str]]:
    """Each user walks the items in order (i3, i4, i5, ...) from a random start: the next item is always
    the successor of the last one."""
    rng = random.Random(seed)
    starts = [rng.randrange(N_ITEMS) for _ in range(n_users)]
    return {f"u{u}": [f"i{(s + t) % N_ITEMS}" for t in range(length)] for u, s in enumerate(starts)}


@pytest.fixture(scope="module")
def split():
    return leave_one_out(successor_histories())


def test_missing_library_names_the_package_and_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cornac", None)  # what `import cornac` meets where it is not installed
    with pytest.raises(ImportError, match=r"`cornac`.*pip install"):
        require_baseline_library()


@pytest.mark.parametrize(
    ("config", "kwargs", "name"),
    [(SASRecConfig, {"n_epochs": 0}, "n_epochs"), (SASRecConfig, {"dropout": 1.0}, "dropout"),
     (BPRConfig, {"factors": 0}, "factors"), (BPRConfig, {"learning_rate": 0.0}, "learning_rate")],
)  # fmt: skip
def test_bad_settings_name_the_field(config, kwargs, name):
    with pytest.raises(ValueError, match=name):
        config(**kwargs)


def test_unknown_items_are_refused_before_training(split):
    with pytest.raises(ValueError, match="missing from `catalog`"):
        bpr_rankings(split.train, CATALOG[:3], split.test)


def test_sasrec_ranks_the_catalog_learns_the_order_and_ignores_test_targets(split):
    run = sasrec_rankings(split.train, CATALOG, split.test, FAST_SASREC, valid=split.valid, top_k=len(CATALOG))
    assert set(run.rankings) == {ex["user"] for ex in split.test}
    assert all(sorted(r) == sorted(CATALOG) for r in run.rankings.values())  # full ranking, unseen item too
    hits = sum(run.rankings[ex["user"]][0] == ex["target"] for ex in split.test)
    assert hits >= 0.8 * len(split.test)  # the successor rule: item ids map back to the right items
    assert all(not set(run.rankings_unseen[ex["user"]]) & set(ex["history"]) for ex in split.test)
    # the test targets play no part: other targets, same seed -> the same rankings
    shuffled = [dict(ex, target=CATALOG[-1]) for ex in split.test]
    again = sasrec_rankings(split.train, CATALOG, shuffled, FAST_SASREC, valid=split.valid, top_k=len(CATALOG))
    assert again.rankings == run.rankings


def test_sasrec_seed_changes_the_model(split):
    configs = [SASRecConfig(**{**vars(FAST_SASREC), "n_epochs": 2, "seed": seed}) for seed in (0, 1)]
    runs = [sasrec_rankings(split.train, CATALOG, split.test, c, top_k=len(CATALOG)) for c in configs]
    assert runs[0].rankings != runs[1].rankings


def test_bpr_prefers_a_users_own_group_and_unseen_rankings_drop_the_history():
    # users u0..u9 only watch i0..i5, users u10..u19 only i6..i11
    rng = random.Random(0)
    train = {f"u{u}": rng.sample(CATALOG[:6] if u < 10 else CATALOG[6:12], 4) for u in range(20)}
    examples = [{"user": u, "history": h, "target": h[-1]} for u, h in train.items()]
    config = BPRConfig(factors=8, max_iter=300, learning_rate=0.05)
    run = bpr_rankings(train, CATALOG, examples, config, top_k=3)
    own = sum(set(r) <= set(CATALOG[:6] if int(u[1:]) < 10 else CATALOG[6:12]) for u, r in run.rankings.items())
    assert own >= 18
    assert run.rankings == bpr_rankings(train, CATALOG, examples, config, top_k=3).rankings  # seeded
    full = bpr_rankings(train, CATALOG, examples, config, top_k=len(CATALOG))
    for user, ranking in full.rankings_unseen.items():  # the full ranking without the user's 4 items, in order
        assert ranking == [i for i in full.rankings[user] if i not in train[user]]
