"""Bootstrap confidence intervals of a run's metrics from its saved predictions (issue 19 §3).

Test samples are resampled with replacement (``n_boot`` times, seeded); where the data has patients
(a ``patient`` column in ``predictions.csv``), whole patients are resampled instead, so images of one
patient stay together (the cluster bootstrap). The interval is the percentile interval of the resampled
metric (95 % by default). Means of per-sample values (accuracy, a re-ID query's AP or rank-1 hit) are
computed for all resamples at once from per-group sums; AP / AUC are recomputed per resample with
``common.metrics``' rank-based per-class routine (one call per resample: about 1,000 x 7 ms at
25,000 x 15).

Metric names follow metrics.json: ``mAP``, ``auc`` / ``mean_class_auc`` / ``macro_auc``, ``per_class_ap``,
``per_class_auc`` (multi-label); ``acc1``, ``per_class_acc`` (single-label); ``mAP``, ``rank1``,
``rank5``, ``rank10`` (re-ID, per valid query). ``_ema`` suffixes are ignored (the predictions are those
of the model the run reported).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.predictions import GROUP_LEVELS, Predictions, ReidPredictions

MULTILABEL_METRICS = ("mAP", "auc", "mean_class_auc", "macro_auc", "per_class_ap", "per_class_auc")
SINGLE_LABEL_METRICS = ("acc1", "per_class_acc")
REID_METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20")


def _groups_index(groups: Sequence[Any] | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample order sorted by group, start of each group in it, size of each group)."""
    if groups is None:
        return np.arange(n), np.arange(n), np.ones(n, dtype=np.int64)
    _, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return order, starts, sizes


class Resampler:
    """Seeded bootstrap draws over samples, or over groups (patients) when ``groups`` is given."""

    def __init__(self, n: int, *, groups: Sequence[Any] | None = None, n_boot: int = 1000, seed: int = 0):
        if n < 1:
            raise ValueError("bootstrap: no sample")
        if n_boot < 1:
            raise ValueError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
        self.n, self.n_boot = n, n_boot
        self.order, self.starts, self.sizes = _groups_index(groups, n)
        self.num_groups = len(self.sizes)
        self.by_group = groups is not None
        # one (n_boot, num_groups) draw of group numbers: every statistic sees the same resamples
        self.draws = np.random.default_rng(seed).integers(0, self.num_groups, size=(n_boot, self.num_groups))

    def indices(self, b: int) -> np.ndarray:
        """Sample indices of resample ``b`` (the members of each drawn group)."""
        g = self.draws[b]
        if not self.by_group:
            return g
        lengths = self.sizes[g]
        offsets = np.repeat(self.starts[g] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return self.order[np.arange(lengths.sum()) + offsets]

    def means(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Resampled means of per-sample ``values`` (N,) or (N, K), over samples where ``mask`` holds;
        returns (n_boot,) or (n_boot, K). Vectorised through per-group sums."""
        v = np.asarray(values, dtype=np.float64)
        squeeze = v.ndim == 1
        v = v.reshape(self.n, -1)
        m = np.ones_like(v) if mask is None else np.broadcast_to(
            np.asarray(mask, dtype=np.float64).reshape(self.n, -1), v.shape)
        # group sums of value * mask and of mask
        sv = np.add.reduceat((v * m)[self.order], self.starts, axis=0) if self.by_group else v * m
        sm = np.add.reduceat(m[self.order], self.starts, axis=0) if self.by_group else m
        out = np.empty((self.n_boot, v.shape[1]))
        chunk = max(1, 4_000_000 // max(self.num_groups, 1))
        for lo in range(0, self.n_boot, chunk):
            d = self.draws[lo:lo + chunk]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[lo:lo + chunk] = sv[d].sum(axis=1) / sm[d].sum(axis=1)
        return out[:, 0] if squeeze else out


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column (NaN resamples, e.g. a class without both labels, are skipped)."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN bounds
            lo = np.nanpercentile(values, 100 * alpha / 2, axis=0)
            hi = np.nanpercentile(values, 100 * (1 - alpha / 2), axis=0)
    return lo, hi


def group_column(preds: Predictions) -> tuple[str | None, list[str] | None]:
    """The coarsest grouping the predictions carry (patient over study), or (None, None)."""
    for level in reversed(GROUP_LEVELS):
        if level in preds.groups:
            return level, preds.groups[level]
    return None, None


def weighted_ap_auc(scores: np.ndarray, positive: np.ndarray, rs: Resampler,
                    chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP and ROC-AUC of every resample, (n_boot, C) each, without re-sorting.

    A resample is a vector of sample multiplicities; each class's scores are sorted once and every
    resample's counts are cumulated along that order, per run of tied scores: AP = sum over tie groups of
    (positives in the group) x precision at the group's end / positives (sklearn's AP, ties one
    threshold; 0 without positives, as ``common.metrics``), AUC = Mann-Whitney with ties counting 1/2
    (NaN when a label value is missing). Equal to ``common.metrics.average_precision`` /
    ``roc_auc_per_class`` on the resampled rows.
    """
    n, c = scores.shape
    ap = np.empty((rs.n_boot, c))
    auc = np.empty((rs.n_boot, c))
    codes = np.empty(n, dtype=np.int64)
    if rs.by_group:
        codes[rs.order] = np.repeat(np.arange(rs.num_groups), rs.sizes)
    classes = []
    for j in range(c):
        order = np.argsort(-scores[:, j], kind="stable")
        ss, y = scores[order, j], positive[order, j]
        group = np.r_[0, np.cumsum(ss[1:] != ss[:-1])]  # tie-group number of each sorted position
        ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
        starts = np.r_[0, ends[:-1] + 1]
        pos = np.flatnonzero(y)
        pos_groups = np.unique(group[pos])
        # for each positive, which of the positive-bearing groups it is in
        slot = np.searchsorted(pos_groups, group[pos])
        classes.append((order, pos, pos_groups, slot, ends[pos_groups], starts[pos_groups]))
    for lo in range(0, rs.n_boot, chunk):
        d = rs.draws[lo:lo + chunk]
        counts = np.stack([np.bincount(row, minlength=rs.num_groups) for row in d], axis=1).astype(np.float64)
        # (n, b): multiplicity of each sample in each resample (rows: cache-friendly gathers and cumsums)
        w = counts[codes] if rs.by_group else counts
        for j, (order, pos, _pos_groups, slot, g_end, g_start) in enumerate(classes):
            if len(pos) == 0:
                ap[lo:lo + chunk, j], auc[lo:lo + chunk, j] = 0.0, np.nan
                continue
            wc = w[order]
            cum = np.cumsum(wc, axis=0)  # the one full pass: #all(>= v) at every sorted position
            tot = cum[g_end]  # (groups with a positive, b)
            before = np.where(g_start[:, None] > 0, cum[np.maximum(g_start - 1, 0)], 0.0)
            tp_inc = np.add.reduceat(wc[pos], np.r_[0, np.flatnonzero(np.diff(slot)) + 1], axis=0)
            tp = np.cumsum(tp_inc, axis=0)  # #pos(>= v): only positive groups add positives
            num_pos = tp[-1]
            num_neg = cum[-1] - num_pos
            fp = tot - tp
            fp_inc = (tot - before) - tp_inc
            with np.errstate(invalid="ignore", divide="ignore"):
                a = (tp_inc * np.where(tot > 0, tp / np.where(tot > 0, tot, 1), 0.0)).sum(axis=0) / num_pos
                u = (tp_inc * ((num_neg - fp) + 0.5 * fp_inc)).sum(axis=0) / (num_pos * num_neg)
            ap[lo:lo + chunk, j] = np.where(num_pos > 0, a, 0.0)
            auc[lo:lo + chunk, j] = np.where((num_pos > 0) & (num_neg > 0), u, np.nan)
    return ap, auc


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(x)
    return np.where(valid.any(axis=1), np.where(valid, x, 0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1), np.nan)


def bootstrap_predictions(preds: Predictions | ReidPredictions, *, n_boot: int = 1000, seed: int = 0,
                          alpha: float = 0.05, by_group: bool = True) -> dict[str, Any]:
    """Bootstrap intervals of every metric the predictions support.

    Returns:
        ``{"n_boot", "seed", "unit" ("sample" | "patient" | "study" | "query"), "num_units", "intervals":
        {metric: (low, high)} or {per_class metric: [(low, high), ...]}}`` as fractions.
    """
    if isinstance(preds, ReidPredictions):
        return _bootstrap_reid(preds, n_boot=n_boot, seed=seed, alpha=alpha)
    level, groups = group_column(preds) if by_group else (None, None)
    rs = Resampler(len(preds.ids), groups=groups, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "alpha": alpha, "unit": level or "sample",
                           "num_units": rs.num_groups, "intervals": {}}
    iv = out["intervals"]
    if preds.multilabel:
        from common.metrics._arrays import scores_and_targets

        s, t = scores_and_targets(preds.probs, np.clip(preds.targets, 0, None))
        ap, auc = weighted_ap_auc(s, t != 0, rs)
        macro_auc = _nanmean_rows(auc)
        iv["mAP"] = tuple(map(float, percentile_interval(ap.mean(axis=1), alpha)))
        for key in ("auc", "mean_class_auc", "macro_auc"):
            iv[key] = tuple(map(float, percentile_interval(macro_auc, alpha)))
        iv["per_class_ap"] = _pairs(*percentile_interval(ap, alpha))
        iv["per_class_auc"] = _pairs(*percentile_interval(auc, alpha))
    else:
        correct = (preds.probs.argmax(axis=1) == preds.targets).astype(np.float64)
        iv["acc1"] = tuple(map(float, percentile_interval(rs.means(correct), alpha)))
        c = preds.probs.shape[1]
        onehot = np.zeros((len(correct), c))
        onehot[np.arange(len(correct)), np.clip(preds.targets, 0, c - 1)] = 1.0
        per_class = rs.means(correct[:, None] * np.ones((1, c)), mask=onehot)
        iv["per_class_acc"] = _pairs(*percentile_interval(per_class, alpha))
    return out


def _pairs(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float, float] | None]:
    return [None if math.isnan(a) or math.isnan(b) else (float(a), float(b)) for a, b in zip(lo, hi)]


def per_query_ranks(p: ReidPredictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first-match rank, AP, valid-query mask) of every query under the Market-1501 rule, from the
    same routine ``common.metrics.evaluate_rank`` averages."""
    from common.metrics.rank import _ranks_sorted

    dist = np.asarray(p.distmat, dtype=np.float64)
    first, ap, _ = _ranks_sorted(dist, p.q_pids, p.g_pids, p.q_camids, p.g_camids)  # valid queries only
    valid = ((p.g_pids[None, :] == p.q_pids[:, None]) & (p.g_camids[None, :] != p.q_camids[:, None])).any(axis=1)
    return first, ap, valid


def _bootstrap_reid(p: ReidPredictions, *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    first, ap, valid = per_query_ranks(p)
    rs = Resampler(len(first), n_boot=n_boot, seed=seed)  # valid queries, independently
    iv: dict[str, Any] = {"mAP": tuple(map(float, percentile_interval(rs.means(ap), alpha)))}
    for r in (1, 5, 10, 20):
        iv[f"rank{r}"] = tuple(map(float, percentile_interval(rs.means((first < r).astype(float)), alpha)))
    return {"n_boot": n_boot, "seed": seed, "alpha": alpha, "unit": "query", "num_units": int(len(first)),
            "intervals": iv}


def mean_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float] | None:
    """Student-t interval of the mean of several runs (None for fewer than two)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)
