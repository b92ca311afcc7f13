"""Section 7: common.metrics mAP / AUC vs per-class scikit-learn; re-ID CMC/mAP vs a per-query loop."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.context import Ctx

SECTION = "metrics"


def loop_reid(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray, g_cams: np.ndarray,
              max_rank: int = 50) -> tuple[np.ndarray, float]:
    """Straightforward Market-1501 evaluation, one query at a time: (CMC, mAP)."""
    cmc_sum = np.zeros(max_rank)
    aps = []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        match = (g_pids[order] == q_pids[i])[keep].astype(np.float64)
        if not match.any():
            continue
        cmc = match.cumsum()
        cmc[cmc > 1] = 1
        cmc_sum += np.pad(cmc, (0, max(0, max_rank - len(cmc))), constant_values=1.0)[:max_rank]
        hits = match.cumsum() / (np.arange(len(match)) + 1.0)
        aps.append(float((hits * match).sum() / match.sum()))
    return cmc_sum / len(aps), float(np.mean(aps))


def run(ctx: Ctx) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from common.metrics import average_precision, compute_distance_matrix, evaluate_rank, roc_auc_per_class

    n, c = (2000, 30) if ctx.quick else (100_000, 30)
    rng = np.random.default_rng(0)
    t = (rng.random((n, c)) < 0.1).astype(np.int64)
    s = rng.normal(size=(n, c)) + t
    for ref_name, ref_fn, our_name, our_fn in (
            ("average_precision_score", average_precision_score, "average_precision", average_precision),
            ("roc_auc_score", roc_auc_score, "roc_auc_per_class", roc_auc_per_class)):
        def per_class(ref_fn=ref_fn) -> list[float]:
            return [ref_fn(t[:, j], s[:, j]) for j in range(c)]

        diff = float(np.abs(our_fn(s, t) - np.array(per_class())).max())
        ref_row = f"sklearn {ref_name} per class ({n} x {c})"
        ctx.measure(SECTION, ref_row, per_class, items=c, warmup=1)
        ctx.measure(SECTION, f"common.metrics {our_name} ({n} x {c})", lambda our_fn=our_fn: our_fn(s, t), items=c,
                    ref=ref_row, extra={"max_abs_diff": diff}, note="target >= 20x (ratio <= 0.05), 1e-9")

    nq, ng, d, loop_q = (100, 500, 64, 20) if ctx.quick else (3368, 15913, 2048, 200)
    g = torch.Generator().manual_seed(0)
    ids = 751
    q_pids = torch.randint(0, ids, (nq,), generator=g).numpy()
    g_pids = torch.randint(0, ids, (ng,), generator=g).numpy()
    g_pids[:nq] = q_pids  # every query has a match
    q_cams = torch.randint(0, 6, (nq,), generator=g).numpy()
    g_cams = (torch.randint(0, 6, (ng,), generator=g).numpy())
    g_cams[:nq] = (q_cams + 1) % 6
    centers = torch.randn(ids, d, generator=g)
    qf = centers[q_pids] + torch.randn(nq, d, generator=g)
    gf = centers[g_pids] + torch.randn(ng, d, generator=g)
    dist_box: dict[str, torch.Tensor] = {}

    def full() -> dict:
        dist_box["d"] = compute_distance_matrix(qf, gf)
        return evaluate_rank(dist_box["d"], q_pids, g_pids, q_cams, g_cams)

    ctx.measure(SECTION, f"re-ID distances + evaluate_rank ({nq} x {ng}, {d}-d)", full, items=nq, warmup=0,
                reps=max(1, ctx.reps - 1))
    dist = dist_box["d"].numpy()
    sub = evaluate_rank(dist[:loop_q], q_pids[:loop_q], g_pids, q_cams[:loop_q], g_cams)
    cmc, m_ap = loop_reid(dist[:loop_q], q_pids[:loop_q], g_pids, q_cams[:loop_q], g_cams)
    diff = max(float(np.abs(sub["cmc"] - cmc).max()), abs(float(sub["mAP"]) - m_ap))
    row = ctx.measure(SECTION, f"per-query loop, {loop_q} queries, scaled to {nq}",
                      lambda: loop_reid(dist[:loop_q], q_pids[:loop_q], g_pids, q_cams[:loop_q], g_cams),
                      items=loop_q, warmup=0, reps=max(1, ctx.reps - 1),
                      extra={"max_abs_diff_cmc_map": diff},
                      note=f"loop on the first {loop_q} queries (given distances), time scaled x{nq / loop_q:.1f}")
    scale = nq / loop_q
    for attr in ("median_s", "min_s", "max_s"):
        setattr(row, attr, getattr(row, attr) * scale)
    row.items = nq
    fast = ctx.find(SECTION, f"re-ID distances + evaluate_rank ({nq} x {ng}, {d}-d)")
    if fast is not None and fast.median_s:
        fast.ref = row.name
        fast.ratio = fast.median_s / row.median_s
        fast.note = "target >= 10x (ratio <= 0.1); includes the distance matrix, the loop does not"
    ctx.measure(SECTION, f"evaluate_rank on given distances ({nq} x {ng})",
                lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams), items=nq, warmup=0,
                reps=max(1, ctx.reps - 1), ref=row.name, note="same work as the loop: target >= 10x (ratio <= 0.1)")
