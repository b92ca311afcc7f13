"""DCAL evaluation metrics over ``common.metrics``.

FGVC: top-1/top-5 of the combined prediction (SA + GLCA class probabilities), top-1 of each branch,
per-class accuracy statistics (the replication's ``fgvc_results.json`` fields).

Re-ID: CMC / mAP / mINP with the Market-1501 rule (gallery items with the query's identity *and*
camera are dropped). Change from the replication (quirk 16): CMC is divided by the number of valid
queries (queries with at least one remaining match), as torchreid and fast-reid do; the replication
divided by all queries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.metrics import compute_distance_matrix, evaluate_rank, per_class_accuracy, topk_accuracy


def fgvc_metrics(outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Metrics from gathered ``predict`` outputs: ``probs`` (combined), ``logits_sa``,
    ``logits_glca`` (optional) and ``target``.

    Returns:
        ``acc1``, ``acc5`` (combined), ``acc1_sa``, ``acc1_glca``, ``loss`` (cross-entropy of the SA
        logits, the replication's val loss), ``mean_class_acc``, ``std_class_acc``,
        ``min_class_acc``, ``max_class_acc`` and ``per_class_acc`` (list; NaN for absent classes).
    """
    target = outputs["target"].long()
    out: dict[str, Any] = dict(topk_accuracy(outputs["probs"], target, (1, 5)))
    out["acc1_sa"] = topk_accuracy(outputs["logits_sa"], target, (1,))["acc1"]
    if "logits_glca" in outputs:
        out["acc1_glca"] = topk_accuracy(outputs["logits_glca"], target, (1,))["acc1"]
    out["loss"] = float(F.cross_entropy(outputs["logits_sa"].float(), target))
    per_class = per_class_accuracy(outputs["probs"], target)
    present = per_class[~np.isnan(per_class)]
    out.update(mean_class_acc=float(present.mean()), std_class_acc=float(present.std()),
               min_class_acc=float(present.min()), max_class_acc=float(present.max()),
               per_class_acc=[None if np.isnan(v) else float(v) for v in per_class])
    return out


def reid_metrics(outputs: dict[str, torch.Tensor], distance_metric: str = "euclidean") -> dict[str, Any]:
    """Re-ID metrics from gathered outputs ``feat``, ``pid``, ``camid`` and ``is_query`` (1 = query,
    0 = gallery).

    Returns:
        ``mAP``, ``mINP``, ``rank1/5/10/20/50``, ``num_query``, ``num_gallery``, ``num_query_ids``,
        ``num_gallery_ids``, ``num_valid_queries``, ``distance_metric``.
    """
    is_query = outputs["is_query"].bool()
    feat, pid, cam = outputs["feat"].float(), outputs["pid"].long(), outputs["camid"].long()
    qf, gf = feat[is_query], feat[~is_query]
    if len(qf) == 0 or len(gf) == 0:
        raise ValueError(f"re-ID evaluation needs queries and gallery items, got {len(qf)} and {len(gf)}")
    dist = compute_distance_matrix(qf, gf, metric=distance_metric)
    res = evaluate_rank(dist, pid[is_query], pid[~is_query], cam[is_query], cam[~is_query], max_rank=50)
    out: dict[str, Any] = {k: float(res[k]) for k in ("mAP", "mINP", "rank1", "rank5", "rank10", "rank20", "rank50")}
    out.update(num_query=int(len(qf)), num_gallery=int(len(gf)),
               num_query_ids=int(pid[is_query].unique().numel()), num_gallery_ids=int(pid[~is_query].unique().numel()),
               num_valid_queries=int(res["num_valid_queries"]), distance_metric=distance_metric)
    return out
