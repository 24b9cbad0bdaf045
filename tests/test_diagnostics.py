from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gti_peft.cli.diagnostics import build_parser, load_reference, report
from gti_peft.training.diagnostics import (
    cosine_matrix,
    cosine_stats,
    effective_rank,
    format_table,
    nearest_old_tokens,
    nearest_tokens_table,
    plot_cosine_matrix,
    plot_spectrum,
    rsa,
    singular_values,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=torch.float64))
    return q


class FakeTokenizer:
    def decode(self, ids):
        return "".join(f"w{i}" for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [f"<t_{i}>" for i in ids] if isinstance(ids, list) else f"<t_{ids}>"

    def convert_tokens_to_ids(self, token):
        return int(token[3:-1])


# --- spectrum and effective rank -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 32])
def test_effective_rank_identity_is_n(n):
    assert effective_rank(torch.eye(n)) == pytest.approx(n, abs=1e-9)


def test_effective_rank_rank_one_and_identical_rows():
    u, v = torch.randn(20, 1, generator=_gen(1)), torch.randn(1, 16, generator=_gen(2))
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)
    assert summarize(u @ v)["effective_rank"] == pytest.approx(1.0, abs=1e-6)  # float32 rounding ignored
    mean_init = np.tile(np.random.default_rng(0).normal(size=(1, 64)), (50, 1)).astype(np.float32)
    assert effective_rank(mean_init) == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_between_extremes_and_zero_matrix():
    rows = torch.diag(torch.tensor([10.0, 1.0, 0.1, 0.0]))
    p = torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64) / 11.1
    assert effective_rank(rows) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
    assert 1.0 < effective_rank(rows) < 3.0
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def test_singular_values_descending_float64():
    rows = torch.randn(6, 4, generator=_gen(3)) * torch.tensor([5.0, 1.0, 3.0, 0.5])
    s = singular_values(rows)
    assert s.dtype == torch.float64 and s.shape == (4,)
    assert torch.all(s[:-1] >= s[1:])
    torch.testing.assert_close(s, torch.linalg.svdvals(rows.double()))


# --- cosine structure ------------------------------------------------------------------------------


def test_cosine_identical_and_orthogonal_rows():
    same = torch.ones(5, 8) * torch.arange(1.0, 9.0)
    stats = cosine_stats(same)
    assert stats["mean_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert stats["max_cosine"] == pytest.approx(1.0, abs=1e-12)
    ortho = cosine_stats(_orthogonal(12, seed=4) * 3.0)
    assert ortho["mean_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert abs(ortho["max_cosine"]) < 1e-12


def test_cosine_stats_match_dense_matrix():
    rows = torch.randn(30, 6, generator=_gen(5))
    dense = cosine_matrix(rows)
    off = dense[~torch.eye(30, dtype=torch.bool)]
    stats = cosine_stats(rows)
    assert stats["mean_cosine"] == pytest.approx(float(off.mean()), abs=1e-12)
    assert stats["max_cosine"] == pytest.approx(float(off.max()), abs=1e-12)
    assert stats["max_cosine"] < 1.0  # the diagonal is excluded


def test_zero_rows_give_no_nan():
    rows = torch.zeros(4, 5)
    rows[0, 0] = 1.0
    dense = cosine_matrix(rows)
    assert not torch.isnan(dense).any()
    assert dense[0, 0] == 1.0 and dense[1, 1] == 0.0
    stats = cosine_stats(rows)
    assert stats == {"mean_cosine": 0.0, "max_cosine": 0.0}
    summary = summarize(rows, old_rows=torch.randn(10, 5, generator=_gen(6)), reference=torch.eye(4))
    assert all(not math.isnan(v) for v in summary.values() if isinstance(v, float))


# --- RSA -------------------------------------------------------------------------------------------


def test_rsa_self_rotation_and_unrelated():
    rows = torch.randn(40, 16, generator=_gen(7), dtype=torch.float64)
    for other in (rows, rows @ _orthogonal(16, seed=8), rows.numpy() * 2.5):
        result = rsa(rows, other)
        assert result["pearson"] == pytest.approx(1.0, abs=1e-9)
        assert result["spearman"] == pytest.approx(1.0, abs=1e-9)
    unrelated = rsa(torch.randn(200, 32, generator=_gen(9)), torch.randn(200, 8, generator=_gen(10)))
    assert abs(unrelated["pearson"]) < 0.05 and abs(unrelated["spearman"]) < 0.05


def test_rsa_spearman_sees_monotone_transform_pearson_does_not():
    # reference whose cosines are a monotone but non-linear function of rows' cosines: build both from angles
    angles = torch.rand(25, generator=_gen(24), dtype=torch.float64) * math.pi  # no tied differences
    rows = torch.stack([angles.cos(), angles.sin()], dim=1)  # cos(rows_i, rows_j) = cos(theta_i - theta_j)
    ref = torch.stack([(angles / 2).cos(), (angles / 2).sin()], dim=1)  # cos((theta_i - theta_j) / 2)
    result = rsa(rows, ref)
    assert result["spearman"] == pytest.approx(1.0, abs=1e-9)
    assert 0.8 < result["pearson"] < 1.0 - 1e-3


def test_rsa_ties_get_average_ranks_and_constant_is_zero():
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # cosines: 1, 0, 0, 0, 0, 1
    result = rsa(rows, rows.clone())
    assert result["spearman"] == pytest.approx(1.0, abs=1e-12)
    # mean init: identical rows whose float64 cosines differ only by matmul rounding noise
    mean_init = (torch.randn(1, 576, generator=_gen(11)) + 0.3).expand(128, 576).clone()
    result = rsa(mean_init, torch.randn(128, 32, generator=_gen(25)))
    assert result == {"pearson": 0.0, "spearman": 0.0}


def test_rsa_max_rows_subsamples_consistently():
    rows = torch.randn(300, 8, generator=_gen(12))
    result = rsa(rows, rows @ _orthogonal(8, seed=13).float(), max_rows=50)
    assert result["pearson"] == pytest.approx(1.0, abs=1e-6)


# --- nearest old tokens ----------------------------------------------------------------------------


def test_nearest_old_tokens_finds_planted_copy(monkeypatch):
    import gti_peft.training.diagnostics as diag

    monkeypatch.setattr(diag, "_CHUNK", 7)  # force several chunks
    old = torch.randn(50, 12, generator=_gen(14))
    new = torch.randn(3, 12, generator=_gen(15))
    old[33] = new[1] * 4.0  # same direction, different norm
    idx, sims = nearest_old_tokens(new, old, k=4)
    assert idx.shape == (3, 4) and sims.shape == (3, 4)
    assert idx[1, 0] == 33 and sims[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert torch.all(sims[:, :-1] >= sims[:, 1:])
    dense = (torch.nn.functional.normalize(new, dim=1) @ torch.nn.functional.normalize(old, dim=1).T).topk(4)
    torch.testing.assert_close(idx, dense.indices)
    one_idx, one_sims = nearest_old_tokens(new[1], old.numpy(), k=2, exclude_ids=[33])
    assert one_idx.shape == (2,) and 33 not in one_idx.tolist() and one_sims[0] < 1.0 - 1e-4


def test_nearest_tokens_table_uses_token_strings():
    old = torch.eye(6)
    new = torch.tensor([[0.0, 0.0, 1.0, 0.1, 0.0, 0.0]])
    table = nearest_tokens_table(FakeTokenizer(), [5], new, old, k=2)
    (token, neighbours), *_ = table
    assert token == "w5"
    assert [n for n, _ in neighbours] == ["w2", "w3"]  # id 5 itself is excluded by default
    assert neighbours[0][1] == pytest.approx(1.0 / math.sqrt(1.01), abs=1e-6)


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: effective_rank(torch.ones(3)), "`rows` must be a 2-D"),
        (lambda: cosine_stats(torch.ones(1, 4)), "`rows` has 1 row"),
        (lambda: rsa(torch.ones(5, 2), torch.ones(4, 2)), "`reference` has 4"),
        (lambda: nearest_old_tokens(torch.ones(2, 3), torch.ones(5, 4)), "`old_rows` must be"),
        (lambda: nearest_old_tokens(torch.ones(2, 3), torch.ones(5, 3), exclude_ids=[9]), "`exclude_ids`"),
        (lambda: nearest_old_tokens(torch.ones(2, 3), torch.ones(5, 3), k=0), "`k` must be"),
        (lambda: summarize(torch.tensor([[1.0, float("nan")], [1.0, 2.0]])), "NaN"),
        (lambda: plot_spectrum({}, "x.png"), "stage_to_rows"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- summaries, table, plots -----------------------------------------------------------------------


def test_summarize_and_format_table():
    old = torch.randn(80, 16, generator=_gen(16))
    init = old.mean(0, keepdim=True).expand(10, 16).clone()
    grounded = torch.randn(10, 16, generator=_gen(17))
    summaries = {
        "init": summarize(init, old_rows=old, reference=grounded[:, :4]),
        "grounded": summarize(grounded, old_rows=old, reference=grounded[:, :4]),
    }
    json.dumps(summaries, allow_nan=False)
    assert summaries["init"]["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert summaries["grounded"]["effective_rank"] > 5
    assert summaries["init"]["mean_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert len(summaries["grounded"]["top_singular_values"]) == 10
    assert summaries["grounded"]["rsa_pearson"] > summaries["init"]["rsa_pearson"]
    table = format_table(summaries)
    header = table.splitlines()[0]
    assert "init" in header and "grounded" in header
    rank_line = next(line for line in table.splitlines() if line.startswith("effective_rank"))
    assert "1.0000" in rank_line and f"{summaries['grounded']['effective_rank']:.4f}" in rank_line
    assert "mean_cosine_to_old" in table


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_plots_write_png(tmp_path):
    rows = torch.randn(12, 8, generator=_gen(18))
    spectrum = plot_spectrum({"init": torch.ones(12, 8), "grounded": rows}, tmp_path / "s.png")
    _assert_png(spectrum)
    labels = [f"<a_{i}>" for i in range(12)]
    cos = plot_cosine_matrix(rows, tmp_path / "c.png", old_rows=torch.randn(100, 8, generator=_gen(19)), labels=labels)
    _assert_png(cos)
    with pytest.raises(ValueError, match="`labels` has 3"):
        plot_cosine_matrix(rows, tmp_path / "bad.png", labels=labels[:3])


def test_report_writes_files(tmp_path):
    vocab, dim, ids = 40, 8, [34, 35, 36, 37, 38, 39]
    old = torch.randn(vocab, dim, generator=_gen(20))
    new = torch.randn(len(ids), dim, generator=_gen(21))
    result = report(
        ids,
        new,
        old,
        FakeTokenizer(),
        tmp_path,
        reference=new @ _orthogonal(dim, seed=23).float(),
        tokens=["<t_36>"],
        top_k=3,
    )
    for name in ("spectrum.png", "cosine.png"):
        _assert_png(tmp_path / name)
    saved = json.loads((tmp_path / "diagnostics.json").read_text())
    assert set(saved["summaries"]) == {"input rows", "old tokens (sample)"}
    assert saved["summaries"]["input rows"]["rsa_pearson"] == pytest.approx(1.0, abs=1e-6)
    assert [t for t, _ in result["nearest"]] == ["w36"]
    neighbour_names = [n for n, _ in result["nearest"][0][1]]
    assert len(neighbour_names) == 3 and not {f"w{i}" for i in ids} & set(neighbour_names)
    assert "input rows" in result["text"] and "'w36'" in result["text"]
    untied = report(ids, new, old, None, tmp_path / "untied", output_rows=new * 2)
    assert "output rows" in untied["summaries"] and len(untied["nearest"]) == len(ids)


def test_load_reference_stacks_levels(tmp_path):
    codebooks = torch.randn(3, 4, 5, generator=_gen(22))
    torch.save(codebooks, tmp_path / "cb.pt")
    np.save(tmp_path / "cb.npy", codebooks[0].numpy())
    assert load_reference(str(tmp_path / "cb.pt")).shape == (12, 5)
    torch.testing.assert_close(load_reference(str(tmp_path / "cb.pt"))[4], codebooks[1, 0])
    assert load_reference(str(tmp_path / "cb.npy")).shape == (4, 5)
    args = build_parser().parse_args(["adapter", "--top-k", "3", "--tokens", "<a_1>", "<b_2>"])
    assert args.top_k == 3 and args.tokens == ["<a_1>", "<b_2>"] and args.base_model is None
