"""Re-identification ranking metrics: distance matrix, CMC, mAP and mINP (Market-1501 protocol).

Follows the conventions of torchreid's ``metrics/rank.py`` (``eval_market1501``) and fast-reid's
mINP, re-implemented from their documented definitions:

- For each query, gallery items with the same identity **and** the same camera are removed
  (they are "too easy" matches from the same camera). Queries left without any correct match are
  skipped and counted in ``num_skipped_queries``; CMC, mAP and mINP average over the valid queries.
- CMC at rank r is the fraction of valid queries whose first correct match is within the top r.
- AP is non-interpolated: the mean of the precision at each correct match of the kept ranking.
- INP = num_pos / (rank position of the hardest, i.e. last, correct match); mINP is its mean.

mossbee/DCAL divides the CMC by all queries instead of the valid ones; that variant equals
``cmc * num_valid_queries / (num_valid_queries + num_skipped_queries)``.

The computation is vectorised over the gallery and over blocks of queries and needs no argsort of
the gallery: only the few correct matches of each query are ranked, by counting the closer
non-matches (see ``_ranks_by_counting``), so no Python loop runs per query.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.metrics._arrays import ArrayLike, to_numpy

# Elements per (queries x gallery) work array; bounds memory to a few hundred MB on Market/MSMT17.
_BLOCK_ELEMENTS = 1 << 22
_REPORTED_RANKS = (1, 5, 10, 20, 50)


def compute_distance_matrix(qf: ArrayLike, gf: ArrayLike, metric: str = "euclidean") -> torch.Tensor:
    """Pairwise distances between query and gallery features.

    Args:
        qf: (Q, D) query features, torch or numpy.
        gf: (G, D) gallery features.
        metric: ``"euclidean"``: plain (not squared) L2 distance
            ``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))``. torchreid returns the squared distance;
            the square root is monotone, so every ranking metric is identical either way.
            ``"cosine"``: ``1 - cos(q, g)`` on L2-normalised features, in [0, 2].

    Returns:
        (Q, G) float tensor on the features' device (float64 if both inputs are float64, else
        float32).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown distance metric {metric!r}; choose 'euclidean' or 'cosine'")
    q = qf if isinstance(qf, torch.Tensor) else torch.from_numpy(np.asarray(qf))
    g = gf if isinstance(gf, torch.Tensor) else torch.from_numpy(np.asarray(gf))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D), got {tuple(q.shape)} and {tuple(g.shape)}")
    dtype = torch.float64 if q.dtype == g.dtype == torch.float64 else torch.float32
    q, g = q.to(dtype), g.to(dtype=dtype, device=q.device)
    if metric == "cosine":
        return 1.0 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
    # The expanded form |q|^2 + |g|^2 - 2 q.g cancels catastrophically for near-identical vectors
    # (float32 gives ~1e-3 instead of 0 after the square root), so it is evaluated in float64.
    q64, g64 = q.double(), g.double()
    sq = q64.pow(2).sum(1, keepdim=True) + g64.pow(2).sum(1)[None, :] - 2.0 * q64 @ g64.t()
    return sq.clamp_min(0.0).sqrt().to(dtype)


def _ids(x: ArrayLike, name: str, n: int) -> np.ndarray:
    a = to_numpy(x, name=name, dtype=np.int64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(a.shape)}")
    return a


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
) -> dict[str, float | int | np.ndarray]:
    """Evaluate a re-ID ranking with the Market-1501 protocol (CMC, mAP, mINP).

    Gallery items are ranked by increasing distance; equal distances keep gallery order (stable
    sort), so the result is deterministic.

    Args:
        distmat: (Q, G) distance matrix (smaller = more similar), torch or numpy.
        q_pids: (Q,) integer identity of each query.
        g_pids: (G,) integer identity of each gallery item.
        q_camids: (Q,) integer camera of each query.
        g_camids: (G,) integer camera of each gallery item.
        max_rank: length of the CMC curve. It may exceed the gallery size: the curve then simply
            stays at 1.0 beyond the last gallery position.

    Returns:
        Dict with ``cmc`` (float64 ndarray of length ``max_rank``; ``cmc[r - 1]`` = rank-r
        accuracy, convert with ``.tolist()`` before writing JSON), ``rank1``, ``rank5``,
        ``rank10``, ``rank20``, ``rank50`` (only those <= ``max_rank``), ``mAP``, ``mINP``,
        ``num_valid_queries`` and ``num_skipped_queries``. Rates are fractions in [0, 1].

    Raises:
        ValueError: on inconsistent shapes, or when no query has a valid gallery match.
    """
    if isinstance(distmat, torch.Tensor):
        keep_double = distmat.dtype == torch.float64
        dist = to_numpy(distmat, name="distmat", dtype=np.float64 if keep_double else np.float32)
    else:
        dist = np.asarray(distmat)
    if not np.issubdtype(dist.dtype, np.number):
        raise ValueError(f"distmat must be numeric, got dtype {dist.dtype}")
    if dist.ndim != 2:
        raise ValueError(f"distmat must be (Q, G), got shape {tuple(dist.shape)}")
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)
    num_q, num_g = dist.shape
    qp, gp = _ids(q_pids, "q_pids", num_q), _ids(g_pids, "g_pids", num_g)
    qc, gc = _ids(q_camids, "q_camids", num_q), _ids(g_camids, "g_camids", num_g)

    if not np.issubdtype(dist.dtype, np.floating):
        dist = dist.astype(np.float64)  # integer distances: the +inf marks need a float type
    # Gallery items grouped by identity: a query's candidate matches are one slice of this order.
    by_pid = np.argsort(gp, kind="stable")
    pid_sorted = gp[by_pid]
    first_ranks, aps, inps = [], [], []
    block = max(1, _BLOCK_ELEMENTS // max(num_g, 1))
    for start in range(0, num_q, block):
        rows = slice(start, start + block)
        first, ap, inp = _ranks_by_counting(dist[rows], qp[rows], gp, qc[rows], gc, by_pid, pid_sorted)
        first_ranks.append(first)
        aps.append(ap)
        inps.append(inp)
    first_rank = np.concatenate(first_ranks)
    num_valid = int(first_rank.shape[0])
    first_hit_counts = np.bincount(np.minimum(first_rank, max_rank), minlength=max_rank + 1)
    ap_sum = float(np.concatenate(aps).sum())
    inp_sum = float(np.concatenate(inps).sum())

    if num_valid == 0:
        raise ValueError(
            f"no query has a valid gallery match ({num_q} queries; every correct match shares the query's camera)"
        )
    cmc = np.cumsum(first_hit_counts[:max_rank]) / num_valid
    out: dict[str, float | int | np.ndarray] = {"cmc": cmc}
    out.update({f"rank{r}": float(cmc[r - 1]) for r in _REPORTED_RANKS if r <= max_rank})
    out.update(
        mAP=ap_sum / num_valid,
        mINP=inp_sum / num_valid,
        num_valid_queries=num_valid,
        num_skipped_queries=num_q - num_valid,
    )
    return out


def _ranks_sorted(
    dist: np.ndarray, qp: np.ndarray, gp: np.ndarray, qc: np.ndarray, gc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank, AP and INP of each valid query from a full stable argsort (exact reference path)."""
    num_g = dist.shape[1]
    order = np.argsort(dist, axis=1, kind="stable")
    same_pid = gp[order] == qp[:, None]
    keep = ~(same_pid & (gc[order] == qc[:, None]))
    match = same_pid & keep
    # Position of each kept item in the ranking after the same-camera removal (0-based).
    kept_rank = np.cumsum(keep, axis=1) - 1
    num_pos = match.sum(axis=1)
    valid = num_pos > 0
    match, kept_rank, num_pos = match[valid], kept_rank[valid], num_pos[valid]
    idx = np.arange(match.shape[0])
    first_rank = kept_rank[idx, match.argmax(axis=1)]
    last_rank = kept_rank[idx, num_g - 1 - match[:, ::-1].argmax(axis=1)]
    # Removed items before the first kept one have kept_rank -1; they never carry a match.
    precision = np.cumsum(match, axis=1) / np.maximum(kept_rank + 1, 1)
    ap = (precision * match).sum(axis=1) / num_pos
    return first_rank.astype(np.int64), ap.astype(np.float64), (num_pos / (last_rank + 1)).astype(np.float64)


def _ranks_by_counting(
    dist: np.ndarray,
    qp: np.ndarray,
    gp: np.ndarray,
    qc: np.ndarray,
    gc: np.ndarray,
    by_pid: np.ndarray,
    pid_sorted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank, AP and INP of each valid query of a block, without an argsort.

    Only the ranks of the correct matches matter. With the K match distances of a query in
    increasing order (m_0 <= ... <= m_K-1), match j sits at kept position
    ``j + #(kept non-matches closer than m_j)``. Those counts are ``searchsorted`` of the K match
    distances into the sorted non-match distances: sorting the values alone is about 10x faster
    than the stable argsort a ranking needs (no index payload to move), and the search touches
    only K items per query. A query's same-identity items (its matches and same-camera junk) are
    read through the identity-grouped gallery order ``by_pid`` (``pid_sorted = gp[by_pid]``), so
    no (queries x gallery) mask is built. Rows where a non-match ties a match distance (the
    stable gallery order then decides) or holding a non-finite distance take the exact sorted
    path, so results equal a stable argsort in every case.
    """
    lo = np.searchsorted(pid_sorted, qp, side="left")
    count = np.searchsorted(pid_sorted, qp, side="right") - lo
    # A non-finite value makes its row sum non-finite (a finite overflow only sends an exact row
    # to the exact path), which is much cheaper than an isfinite pass over the block.
    finite = np.isfinite(dist.sum(axis=1, dtype=np.float64))
    present = count > 0
    slow = present & ~finite
    fast = np.flatnonzero(present & finite)
    first = np.zeros(0, dtype=np.int64)
    ap = inp = np.zeros(0, dtype=np.float64)
    if fast.size:
        k_same = int(count[fast].max())
        slot = np.arange(k_same)[None, :]
        in_group = slot < count[fast, None]
        # Slots past a query's group repeat its first item, harmless for the +inf marking below.
        same_idx = by_pid[lo[fast, None] + np.where(in_group, slot, 0)]
        d = dist[fast]
        same_d = np.take_along_axis(d, same_idx, axis=1)
        is_match = in_group & (gc[same_idx] != qc[fast, None])
        n_pos = is_match.sum(axis=1)
        match_dist = np.sort(np.where(is_match, same_d, np.inf), axis=1)
        others = d.copy()
        np.put_along_axis(others, same_idx, np.inf, axis=1)  # matches and junk do not count
        others.sort(axis=1)
        others_t, match_t = torch.from_numpy(others), torch.from_numpy(match_dist)
        closer = torch.searchsorted(others_t, match_t, side="left").numpy()
        tied = torch.searchsorted(others_t, match_t, side="right").numpy() != closer
        real = slot < n_pos[:, None]
        # A query whose gallery holds only same-camera images of its identity has no match.
        has_match = n_pos > 0
        ok = has_match & ~(tied & real).any(axis=1)
        rank = slot + closer  # 0-based kept position of match j
        ap_all = ((slot + 1) / (rank + 1) * real).sum(axis=1) / np.maximum(n_pos, 1)
        last = np.take_along_axis(rank, np.maximum(n_pos - 1, 0)[:, None], axis=1)[:, 0]
        first, ap, inp = rank[ok, 0], ap_all[ok], (n_pos / (last + 1))[ok]
        slow[fast[has_match & ~ok]] = True
    if slow.any():
        rows = np.flatnonzero(slow)
        s_first, s_ap, s_inp = _ranks_sorted(dist[rows], qp[rows], gp, qc[rows], gc)
        first, ap, inp = np.concatenate([first, s_first]), np.concatenate([ap, s_ap]), np.concatenate([inp, s_inp])
    return first, ap.astype(np.float64), inp.astype(np.float64)
