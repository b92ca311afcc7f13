"""common.metrics.rank against a per-query reference loop (Market-1501 rule), with ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits

import common.metrics.rank as rank_mod
from common.metrics.rank import compute_distance_matrix, evaluate_rank


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Straightforward torchreid-style loop: one query at a time, stable sort, same pid+cam removed."""
    cmcs, aps, inps, skipped = [], [], [], 0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = [g for g in order if not (g_pids[g] == q_pids[i] and g_camids[g] == q_camids[i])]
        hits = np.array([1 if g_pids[g] == q_pids[i] else 0 for g in keep])
        if hits.sum() == 0:
            skipped += 1
            continue
        cmc = np.array([1.0 if hits[: r + 1].any() else 0.0 for r in range(max_rank)])
        precisions = [hits[: k + 1].sum() / (k + 1) for k in range(len(hits)) if hits[k]]
        hardest = max(k for k in range(len(hits)) if hits[k])
        cmcs.append(cmc)
        aps.append(np.mean(precisions))
        inps.append(hits.sum() / (hardest + 1))
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps), skipped


def _tied_problem(seed: int, num_q: int = 25, num_g: int = 60):
    rng = np.random.default_rng(seed)
    distmat = rng.integers(0, 6, size=(num_q, num_g)).astype(np.float64)  # heavy ties
    g_pids = rng.integers(0, 8, size=num_g)
    g_camids = rng.integers(0, 3, size=num_g)
    q_pids = rng.integers(0, 8, size=num_q)
    q_camids = rng.integers(0, 3, size=num_q)
    # query 0: identity 99 appears in the gallery only under the query's own camera -> skipped
    q_pids[0], q_camids[0] = 99, 1
    g_pids[:2], g_camids[:2] = 99, 1
    # query 1: identity absent from the gallery -> skipped
    q_pids[1] = 100
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_rank", [10, 50, 80])
def test_evaluate_rank_matches_reference_loop_with_ties(seed, max_rank):
    distmat, q_pids, g_pids, q_camids, g_camids = _tied_problem(seed)
    out = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    cmc, m_ap, m_inp, valid, skipped = _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    assert out["num_skipped_queries"] == skipped >= 2
    assert out["num_valid_queries"] == valid == len(q_pids) - skipped
    assert out["cmc"].shape == (max_rank,)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
    assert out["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert out["mINP"] == pytest.approx(m_inp, abs=1e-12)
    for r in (1, 5, 10, 20, 50):
        if r <= max_rank:
            assert out[f"rank{r}"] == pytest.approx(cmc[r - 1])
        else:
            assert f"rank{r}" not in out
    if max_rank == 80:  # longer than the 60-item gallery: the curve saturates at 1.0
        assert out["cmc"][-1] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluate_rank_sort_free_path_matches_loop_with_mixed_rows(dtype, monkeypatch):
    # Continuous distances take the sort-free path; some rows get a non-match tied to a match
    # distance, an infinite or a NaN distance, which take the exact sorted path; the result must
    # equal the loop in every case, and both paths must really run.
    rng = np.random.default_rng(11)
    num_q, num_g = 30, 80
    distmat = rng.random((num_q, num_g)).astype(dtype)
    g_pids, g_camids = rng.integers(0, 6, size=num_g), rng.integers(0, 3, size=num_g)
    q_pids, q_camids = rng.integers(0, 6, size=num_q), rng.integers(0, 3, size=num_q)
    for row in (2, 7):  # a non-match at exactly a match's distance, listed before it
        match = np.flatnonzero((g_pids == q_pids[row]) & (g_camids != q_camids[row]))[-1]
        other = np.flatnonzero(g_pids != q_pids[row])[0]
        distmat[row, other] = distmat[row, match]
    distmat[4, 5], distmat[9, 1] = np.inf, np.nan
    calls = {"sorted_rows": 0}
    real_sorted = rank_mod._ranks_sorted

    def counting(dist, *rest):
        calls["sorted_rows"] += dist.shape[0]
        return real_sorted(dist, *rest)

    monkeypatch.setattr(rank_mod, "_ranks_sorted", counting)
    out = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)
    cmc, m_ap, m_inp, valid, skipped = _reference(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    assert 4 <= calls["sorted_rows"] < valid  # rows 2, 4, 7, 9 exact, the others sort-free
    assert out["num_valid_queries"] == valid and out["num_skipped_queries"] == skipped
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
    assert out["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert out["mINP"] == pytest.approx(m_inp, abs=1e-12)


def test_evaluate_rank_block_processing_gives_same_result(monkeypatch):
    problem = _tied_problem(3, num_q=40)
    full = evaluate_rank(*problem)
    monkeypatch.setattr(rank_mod, "_BLOCK_ELEMENTS", 7 * 60)  # 7 queries per block
    blocked = evaluate_rank(*problem)
    np.testing.assert_array_equal(full["cmc"], blocked["cmc"])
    assert full["mAP"] == pytest.approx(blocked["mAP"], abs=1e-15)
    assert full["mINP"] == pytest.approx(blocked["mINP"], abs=1e-15)


def test_evaluate_rank_hand_example():
    # gallery order by distance: g0 (other pid), g1 (hit), g2 (same pid+cam: removed), g3 (other), g4 (hit)
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    out = evaluate_rank(distmat, [7], [1, 7, 7, 2, 7], [0], [1, 1, 0, 1, 2], max_rank=5)
    # kept ranking: - + - +  -> AP = (1/2 + 2/4) / 2, hardest positive at rank 4 -> INP = 2/4
    assert out["mAP"] == pytest.approx(0.5)
    assert out["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1, 1])
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0


def test_evaluate_rank_accepts_torch_and_rejects_no_valid_query():
    distmat, q_pids, g_pids, q_camids, g_camids = _tied_problem(4)
    a = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    b = evaluate_rank(torch.from_numpy(distmat).float(), torch.from_numpy(q_pids), torch.from_numpy(g_pids),
                      torch.from_numpy(q_camids), torch.from_numpy(g_camids))
    assert a["mAP"] == pytest.approx(b["mAP"]) and a["rank1"] == b["rank1"]
    with pytest.raises(ValueError, match="no query has a valid gallery match"):
        evaluate_rank(distmat[:2], q_pids[:2], g_pids, q_camids[:2], g_camids)
    with pytest.raises(ValueError, match=r"g_pids must have shape \(60,\)"):
        evaluate_rank(distmat, q_pids, g_pids[:5], q_camids, g_camids)


def test_compute_distance_matrix_euclidean_and_cosine_match_scipy():
    rng = np.random.default_rng(5)
    qf, gf = rng.normal(size=(6, 16)), rng.normal(size=(9, 16))
    eu = compute_distance_matrix(torch.from_numpy(qf), torch.from_numpy(gf), "euclidean")
    co = compute_distance_matrix(qf, gf, "cosine")
    assert eu.dtype == torch.float64 and co.shape == (6, 9)
    np.testing.assert_allclose(eu.numpy(), cdist(qf, gf, "euclidean"), atol=1e-9)  # plain, not squared
    np.testing.assert_allclose(co.numpy(), cdist(qf, gf, "cosine"), atol=1e-9)
    same = compute_distance_matrix(torch.from_numpy(qf).float(), torch.from_numpy(qf).float())
    assert torch.all(same.diagonal() < 1e-3) and not torch.isnan(same).any()
    with pytest.raises(ValueError, match="unknown distance metric 'manhattan'"):
        compute_distance_matrix(qf, gf, "manhattan")


def test_cosine_and_euclidean_rank_identically_on_normalised_features():
    rng = np.random.default_rng(6)
    qf, gf = rng.normal(size=(20, 8)), rng.normal(size=(50, 8))
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    ids = dict(q_pids=rng.integers(0, 5, 20), g_pids=rng.integers(0, 5, 50),
               q_camids=np.zeros(20, dtype=int), g_camids=np.ones(50, dtype=int))
    eu = evaluate_rank(compute_distance_matrix(qf, gf, "euclidean"), **ids)
    co = evaluate_rank(compute_distance_matrix(qf, gf, "cosine"), **ids)
    assert eu["mAP"] == pytest.approx(co["mAP"]) and eu["rank1"] == co["rank1"]
    # on unnormalised features the two metrics genuinely differ
    raw_q, raw_g = qf * rng.uniform(0.1, 10, (20, 1)), gf * rng.uniform(0.1, 10, (50, 1))
    eu_raw = evaluate_rank(compute_distance_matrix(raw_q, raw_g, "euclidean"), **ids)
    co_raw = evaluate_rank(compute_distance_matrix(raw_q, raw_g, "cosine"), **ids)
    assert co_raw["mAP"] == pytest.approx(co["mAP"]) and eu_raw["mAP"] != pytest.approx(co["mAP"])


def test_evaluate_rank_on_digit_images_retrieves_same_digit():
    """Real images: pixel-space nearest neighbours of sklearn digits mostly share the query's digit."""
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    q, g = idx[:100], idx[100:700]
    distmat = compute_distance_matrix(x[q], x[g], "euclidean")
    out = evaluate_rank(distmat, y[q], y[g], np.zeros(100, dtype=int), np.ones(600, dtype=int))
    assert out["rank1"] > 0.9 and out["mAP"] > 0.4
    shuffled = evaluate_rank(distmat, y[q], rng.permutation(y[g]), np.zeros(100, dtype=int), np.ones(600, dtype=int))
    assert shuffled["rank1"] < 0.5 and shuffled["mAP"] < 0.2  # random identities: near chance (~0.1)
