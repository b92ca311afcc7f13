"""Multi-label metrics: non-interpolated AP / mAP, ROC-AUC, F1 and element-wise accuracy.

Used by dvxray (DvXray, `engine_finetune.evaluate` of MCB-U), charm_xray (ChestX-ray14 ROC-AUC)
and cxrlt (CXR-LT macro mAP). Conventions:

- AP per class is the non-interpolated area ``sum_k P_k * (R_k - R_{k-1})`` over the distinct
  score thresholds, identical to ``sklearn.metrics.average_precision_score``. Tied scores form one
  threshold. The DvXray original (`get_ap.py`) breaks ties by the order of its sort instead; we
  follow scikit-learn because that result does not depend on sample order (only differs on ties).
- A class without positives has an undefined AP. It is reported as 0.0 (as in MCB-U and the
  CXR-LT winner), so it lowers the mAP, and it is *flagged*: the class is listed under
  ``no_positive_classes`` and one warning per call names all such classes.
- AP and AUC depend only on the ranking, so they are computed on the scores as given (logits are
  fine); applying a float32 sigmoid first could saturate large logits into artificial ties.
- Every function accepts torch tensors (any float dtype, any device) or numpy arrays of shape
  (N, C) and loops over classes at most, never over samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.special import expit

from common.metrics._arrays import ArrayLike, binary_targets, non_finite_error, scores_and_targets

_logger = logging.getLogger(__name__)

# Clamp used by the DvXray original for every precision / recall / F1 denominator.
_F1_EPS = 1e-12


def _threads() -> int:
    return max(1, torch.get_num_threads())


class _NonFinite(Exception):
    pass


def _class_ranking(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(AP, ROC-AUC) of one class from two sorts: all its scores, and its positives' scores.

    Each positive of score v contributes its precision at the threshold v,
    ``#pos(>= v) / #all(>= v)``, which is sklearn's AP with tied scores forming one threshold. Its
    AUC share is ``#neg(< v) + #neg(== v) / 2`` (Mann-Whitney, ties count 1/2). The counts come
    from ``searchsorted`` into the sorted scores, so no argsort (the slow, data-moving part of a
    ranking) is needed.
    """
    everything = np.sort(scores)
    if not (np.isfinite(everything[0]) and np.isfinite(everything[-1])):  # NaN sorts last, -inf first
        raise _NonFinite
    pos = np.sort(scores[positive])
    n, num_pos = scores.shape[0], pos.shape[0]
    if num_pos == 0:
        return 0.0, float("nan")
    all_lt = np.searchsorted(everything, pos, side="left")
    # #pos(< v) is a positive's own index in the sorted positives unless positives tie
    pos_ties = num_pos > 1 and bool((pos[1:] == pos[:-1]).any())
    pos_lt = np.searchsorted(pos, pos, side="left") if pos_ties else np.arange(num_pos)
    ap = float(np.sum((num_pos - pos_lt) / (n - all_lt)) / num_pos)
    num_neg = n - num_pos
    if num_neg == 0:
        return ap, float("nan")
    neg_lt = all_lt - pos_lt
    neg_lt_sum = float(neg_lt.sum())
    if (everything[1:] == everything[:-1]).any():
        # Only tied scores make #neg(<= v) differ from #neg(< v).
        neg_le = np.searchsorted(everything, pos, side="right") - np.searchsorted(pos, pos, side="right")
        neg_lt_sum += 0.5 * float((neg_le - neg_lt).sum())
    return ap, neg_lt_sum / (num_pos * num_neg)


def _per_class_ap_auc(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP (0.0 without positives) and ROC-AUC (NaN when undefined) of validated (N, C) arrays."""
    # One class per contiguous row: torch's blocked (and threaded) transpose is several times
    # faster than numpy's for (N, C) with small C, and per-column strided copies are slower still.
    scores_by_class = s.T if s.T.flags.c_contiguous else torch.from_numpy(np.ascontiguousarray(s)).t().contiguous().numpy()
    positive_by_class = np.ascontiguousarray((t != 0).T)
    classes = range(s.shape[1])
    workers = min(_threads(), s.shape[1])
    # numpy releases the GIL in sort / searchsorted / copies, so classes run in parallel on the
    # torch thread budget; small inputs are not worth a pool.
    try:
        if workers > 1 and s.size >= 200_000:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                stats = list(pool.map(lambda j: _class_ranking(scores_by_class[j], positive_by_class[j]), classes))
        else:
            stats = [_class_ranking(scores_by_class[j], positive_by_class[j]) for j in classes]
    except _NonFinite:
        raise non_finite_error(s) from None
    ap, auc = (np.array(x, dtype=np.float64) for x in zip(*stats, strict=True))
    return ap, auc


def _per_class_ap(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    return _per_class_ap_auc(s, t)[0]


def _no_positive(t: np.ndarray, class_names: Sequence[str] | None) -> list:
    idx = np.flatnonzero(t.sum(axis=0) == 0).tolist()
    return [class_names[i] for i in idx] if class_names is not None else idx


def _check_names(class_names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if class_names is None:
        return None
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but scores have {num_classes} columns")
    return list(class_names)


def _warn_no_positive(flagged: list) -> None:
    if flagged:
        _logger.warning(
            "%d class(es) have no positive target; their AP is reported as 0.0 and lowers the mAP: %s",
            len(flagged),
            ", ".join(map(str, flagged)),
        )


def average_precision(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class non-interpolated average precision (equals sklearn's ``average_precision_score``).

    Args:
        scores: (N, C) scores, logits or probabilities; higher means more likely positive.
            A 1-D array is treated as one class.
        targets: (N, C) binary targets (0/1).

    Returns:
        float64 array of shape (C,). Classes without any positive get 0.0; use
        :func:`classes_without_positives` or :func:`mean_average_precision` to find them.
    """
    s, t = scores_and_targets(scores, targets, check_finite=False)
    return _per_class_ap(s, t)


def classes_without_positives(targets: ArrayLike, class_names: Sequence[str] | None = None) -> list:
    """List the classes whose target column has no positive.

    Args:
        targets: (N, C) binary targets.
        class_names: optional C names; when given, names are returned instead of indices.

    Returns:
        Column indices (or names) of the classes with no positive, in class order.
    """
    t = binary_targets(targets)
    return _no_positive(t, _check_names(class_names, t.shape[1]))


def mean_average_precision(
    scores: ArrayLike, targets: ArrayLike, *, class_names: Sequence[str] | None = None
) -> tuple[float, list]:
    """Macro mAP over all C classes; classes without positives count as AP 0.0 and are flagged.

    Args:
        scores: (N, C) scores, logits or probabilities.
        targets: (N, C) binary targets.
        class_names: optional C names used in the returned flag list and the warning.

    Returns:
        ``(mAP, no_positive_classes)``: the mean of the C per-class APs and the indices (or names)
        of the classes that had no positive. One warning is logged per call when that list is not
        empty.
    """
    s, t = scores_and_targets(scores, targets, check_finite=False)
    names = _check_names(class_names, t.shape[1])
    flagged = _no_positive(t, names)
    _warn_no_positive(flagged)
    return float(_per_class_ap(s, t).mean()), flagged


def _per_class_auc(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    return _per_class_ap_auc(s, t)[1]


def roc_auc_per_class(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class ROC-AUC (equals ``sklearn.metrics.roc_auc_score`` per column, ties included).

    Args:
        scores: (N, C) scores, logits or probabilities.
        targets: (N, C) binary targets.

    Returns:
        float64 array of shape (C,); NaN for a class whose column is all-positive or all-negative
        (ROC-AUC is undefined there).
    """
    s, t = scores_and_targets(scores, targets, check_finite=False)
    return _per_class_auc(s, t)


def macro_auc(scores: ArrayLike, targets: ArrayLike) -> float:
    """Macro ROC-AUC: mean of the per-class AUCs over classes having both positives and negatives.

    sklearn's ``roc_auc_score(Y, P)`` (what CHARM-Xray prints) gives the same value when every
    class is defined; it raises instead of skipping when one is not.

    Args:
        scores: (N, C) scores, logits or probabilities.
        targets: (N, C) binary targets.

    Returns:
        The mean AUC, or NaN (with a logged warning) when no class is defined.
    """
    return _macro(roc_auc_per_class(scores, targets))


def _macro(per_class_auc: np.ndarray) -> float:
    valid = ~np.isnan(per_class_auc)
    if not valid.any():
        _logger.warning("ROC-AUC is undefined for every class (each has only one label value); auc = NaN")
        return float("nan")
    if not valid.all():
        _logger.warning(
            "ROC-AUC undefined for %d class(es) (single label value); macro AUC averages the other %d",
            int((~valid).sum()),
            int(valid.sum()),
        )
    return float(per_class_auc[valid].mean())


def _predictions(s: np.ndarray, threshold: float, from_logits: bool) -> np.ndarray:
    probs = expit(s) if from_logits else s
    # Strict ">" as in the DvXray original (sigma(z) > threshold).
    return (probs > threshold).astype(np.int64)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    precision = tp / np.maximum(tp + fp, _F1_EPS)
    recall = tp / np.maximum(tp + fn, _F1_EPS)
    return 2 * precision * recall / np.maximum(precision + recall, _F1_EPS)


def f1_scores(
    scores: ArrayLike, targets: ArrayLike, threshold: float = 0.5, *, from_logits: bool = True
) -> dict[str, float | list[float]]:
    """Micro and macro F1 at a fixed threshold, as computed by the DvXray original.

    Per-class precision, recall and F1 use denominators clamped at 1e-12, so a class with no
    predicted and no actual positive gets F1 = 0 (sklearn's ``zero_division=0``).

    Args:
        scores: (N, C) logits (``from_logits=True``) or probabilities.
        targets: (N, C) binary targets.
        threshold: a sample is predicted positive when its probability is strictly above this.
        from_logits: apply a sigmoid to ``scores`` before thresholding.

    Returns:
        ``{"f1_micro": float, "f1_macro": float, "per_class_f1": list[float]}``; micro F1 uses TP,
        FP and FN summed over all classes.
    """
    s, t = scores_and_targets(scores, targets)
    return _f1_dict(_predictions(s, threshold, from_logits), t)


def _f1_dict(pred: np.ndarray, t: np.ndarray) -> dict[str, float | list[float]]:
    tp = (pred * t).sum(axis=0).astype(np.float64)
    fp = (pred * (1 - t)).sum(axis=0).astype(np.float64)
    fn = ((1 - pred) * t).sum(axis=0).astype(np.float64)
    per_class = _f1(tp, fp, fn)
    micro = _f1(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    return {"f1_micro": float(micro[0]), "f1_macro": float(per_class.mean()), "per_class_f1": per_class.tolist()}


def multilabel_metrics(
    scores: ArrayLike,
    targets: ArrayLike,
    threshold: float = 0.5,
    *,
    from_logits: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict[str, float | list]:
    """All multi-label validation metrics in one dict (the keys a run writes to metrics.json).

    Args:
        scores: (N, C) logits (``from_logits=True``) or probabilities, torch or numpy.
        targets: (N, C) binary targets.
        threshold: probability threshold for ``acc1`` and the F1 scores (strictly greater).
        from_logits: whether ``scores`` are logits; only affects the thresholded metrics, because
            AP and AUC are rank-based.
        class_names: optional C names; ``no_positive_classes`` then lists names, not indices.

    Returns:
        Dict with ``mAP`` (mean AP over all C classes, no-positive classes counted as 0),
        ``per_class_ap`` (list of C floats), ``no_positive_classes`` (list), ``f1_micro``,
        ``f1_macro``, ``acc1`` (micro element-wise accuracy at ``threshold``), ``auc`` (macro
        ROC-AUC over classes having positives and negatives; NaN if none) and ``per_class_auc``
        (list of C floats, None where undefined). All values are fractions in [0, 1].
    """
    s, t = scores_and_targets(scores, targets)
    names = _check_names(class_names, t.shape[1])
    flagged = _no_positive(t, names)
    _warn_no_positive(flagged)
    ap, auc = _per_class_ap_auc(s, t)
    pred = _predictions(s, threshold, from_logits)
    f1 = _f1_dict(pred, t)
    return {
        "mAP": float(ap.mean()),
        "per_class_ap": ap.tolist(),
        "no_positive_classes": flagged,
        "f1_micro": f1["f1_micro"],
        "f1_macro": f1["f1_macro"],
        "acc1": float((pred == t).mean()),
        "auc": _macro(auc),
        # None rather than NaN keeps metrics.json strict JSON.
        "per_class_auc": [None if np.isnan(a) else float(a) for a in auc],
    }
