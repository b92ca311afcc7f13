"""Per-class decision thresholds fitted on the validation predictions, and the calibration report.

Usage::

    python -m common.thresholds RUN_DIR [--method f1|youden|sensitivity=0.9] [--bins 100,1000] [--n_bins 15]

Fits one threshold per class on ``RUN_DIR/predictions_val.csv`` (the validation split; a run without a
separate validation split falls back to ``predictions.csv`` and says so: thresholds then fitted and
scored on one split are optimistic), writes ``thresholds.json`` (method, what it was fitted on, the
thresholds by class, and the report), ``reliability.png`` and a ``thresholds`` summary in
``metrics.json``. A class is predicted positive when its probability is >= its threshold.

* ``f1``: the cut maximising the class's F1; ``youden``: maximising TPR - FPR; ``sensitivity=X``: the
  highest cut whose TPR is >= X. A class without validation positives keeps 0.5 (listed).
* The report, on the evaluation predictions (``predictions.csv``): per-class precision / recall / F1 at
  those thresholds and their macro means, the expected calibration error (``n_bins`` equal-width bins
  over every class probability) and the reliability diagram; with ``--bins LOW,HIGH`` (cxrlt's default
  100,1000) also head / medium / tail means by the training frequency of each class (``train_class_counts``
  in metrics.json): head > HIGH training positives, tail < LOW, medium between.

A single-label run (xmnet, dcal FGVC: the arg-max decides) gets no thresholds but the top-1
calibration report: ``calibration.json`` (top-1 accuracy, mean confidence, ECE over the top-class
confidence), ``reliability.png`` and ``calibration`` in metrics.json.

``load_thresholds(run_dir_or_checkpoint)`` reads them back (a run folder, its ``thresholds.json``, a
checkpoint beside one, or a safetensors export carrying them in its metadata) for ``predict.py
--threshold val``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import atomic_write_text
from common.predictions import (
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    Predictions,
    PredictionsError,
    read_predictions,
)
from common.run import to_plain

THRESHOLDS_FILE = "thresholds.json"
RELIABILITY_FILE = "reliability.png"
CALIBRATION_FILE = "calibration.json"  # single-label runs: the top-1 calibration report (no thresholds)
METHODS = ("f1", "youden", "sensitivity=X")
#: safetensors metadata key holding thresholds.json's content
METADATA_KEY = "thresholds"


class ThresholdError(ValueError):
    """Bad input (unknown method, no predictions, ...); one-line message."""


def parse_method(text: str) -> tuple[str, float | None]:
    if text in ("f1", "youden"):
        return text, None
    if text.startswith("sensitivity="):
        try:
            target = float(text.split("=", 1)[1])
        except ValueError:
            target = float("nan")
        if not 0.0 < target <= 1.0:
            raise ThresholdError(f"--method {text}: the sensitivity must be a number in (0, 1]")
        return "sensitivity", target
    raise ThresholdError(f"--method {text}: choose f1, youden or sensitivity=X")


def _cuts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate cuts (each distinct score, descending) with TP and FP counts of ``score >= cut``."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    return s[ends], tp.astype(np.float64), fp.astype(np.float64)


def fit_thresholds(probs: np.ndarray, targets: np.ndarray, method: str = "f1") -> tuple[np.ndarray, list[int]]:
    """Per-class thresholds (N, C probabilities, binary targets); returns (thresholds, classes kept at 0.5)."""
    kind, target = parse_method(method)
    probs, positive = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0
    out = np.full(probs.shape[1], 0.5)
    skipped = []
    for j in range(probs.shape[1]):
        num_pos = positive[:, j].sum()
        num_neg = len(positive) - num_pos
        if num_pos == 0:
            skipped.append(j)
            continue
        cut, tp, fp = _cuts(probs[:, j], positive[:, j])
        if kind == "f1":
            score = 2 * tp / (tp + fp + num_pos)
            out[j] = cut[int(np.argmax(score))]  # ties: the highest cut
        elif kind == "youden":
            score = tp / num_pos - (fp / num_neg if num_neg else 0.0)
            out[j] = cut[int(np.argmax(score))]
        else:
            ok = np.flatnonzero(tp / num_pos >= target - 1e-12)
            out[j] = cut[int(ok[0])]  # cuts descend: the first reaching the sensitivity is the highest
    return out, skipped


def scores_at(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 of ``probs >= thresholds`` (0 where undefined)."""
    pred = np.asarray(probs) >= np.asarray(thresholds)[None, :]
    pos = np.asarray(targets) > 0
    tp = (pred & pos).sum(0).astype(np.float64)
    fp = (pred & ~pos).sum(0)
    fn = (~pred & pos).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def reliability_curve(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Equal-width reliability bins over every (sample, class) probability of a multi-label model, or
    over the top-class confidence of a single-label one (``targets`` 1-D).

    Returns:
        ``{"ece", "bin_edges", "confidence", "frequency", "count"}`` (bins without samples: NaN).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        conf = probs.max(axis=1)
        hit = (probs.argmax(axis=1) == targets).astype(np.float64)
    else:
        conf, hit = probs.reshape(-1), (targets.reshape(-1) > 0).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        freq = np.bincount(idx, weights=hit, minlength=n_bins) / count
    filled = count > 0
    ece = float((count[filled] / count.sum() * np.abs(freq[filled] - mean_conf[filled])).sum())
    return {"ece": ece, "bin_edges": edges.tolist(), "confidence": mean_conf.tolist(), "frequency": freq.tolist(),
            "count": count.astype(int).tolist()}


def plot_reliability(curve: dict[str, Any], path: str | Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 5))
    conf, freq = np.array(curve["confidence"], dtype=float), np.array(curve["frequency"], dtype=float)
    keep = ~np.isnan(conf)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.plot(conf[keep], freq[keep], "o-", label=f"model (ECE {curve['ece']:.4f})")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def frequency_bins(train_counts: Sequence[float], low: float, high: float) -> dict[str, list[int]]:
    counts = np.asarray(train_counts, dtype=np.float64)
    return {"head": np.flatnonzero(counts > high).tolist(),
            "medium": np.flatnonzero((counts >= low) & (counts <= high)).tolist(),
            "tail": np.flatnonzero(counts < low).tolist()}


def _mean(values: np.ndarray, idx: Sequence[int]) -> float | None:
    return float(np.mean(values[list(idx)])) if len(idx) else None


def report(preds: Predictions, thresholds: np.ndarray, *, n_bins: int = 15,
           train_counts: Sequence[float] | None = None, bins: tuple[float, float] | None = None) -> dict[str, Any]:
    """Per-class precision / recall / F1 at ``thresholds``, ECE and (with ``bins``) head / medium / tail."""
    sc = scores_at(preds.probs, preds.targets, thresholds)
    names = preds.class_names
    out: dict[str, Any] = {
        "evaluated_on": preds.path.name if preds.path else None, "samples": len(preds.ids),
        "per_class": {n: {"threshold": float(t), **{k: float(v[j]) for k, v in sc.items()}}
                      for j, (n, t) in enumerate(zip(names, thresholds))},
        "macro": {k: float(v.mean()) for k, v in sc.items()},
    }
    curve = reliability_curve(preds.probs, preds.targets, n_bins)
    out["ece"] = curve["ece"]
    out["reliability"] = curve
    if bins is not None and train_counts is not None:
        if len(train_counts) != len(names):
            raise ThresholdError(f"train_class_counts has {len(train_counts)} values for {len(names)} classes")
        from common.metrics import average_precision

        ap = average_precision(preds.probs, np.clip(preds.targets, 0, None))
        groups = frequency_bins(train_counts, *bins)
        out["frequency_bins"] = {
            "rule": f"head > {bins[1]:g} training positives, medium {bins[0]:g}..{bins[1]:g}, tail < {bins[0]:g}",
            **{g: {"classes": [names[i] for i in idx], "AP": _mean(ap, idx), "F1": _mean(sc["f1"], idx),
                   "recall": _mean(sc["recall"], idx)} for g, idx in groups.items()}}
    return out


def fit_run(run_dir: str | Path, method: str = "f1", *, n_bins: int = 15,
            bins: tuple[float, float] | None = None) -> dict[str, Any]:
    """Fit, report and store (``thresholds.json``, ``reliability.png``, metrics.json) for one run folder."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ThresholdError(f"run folder not found: {run}")
    val_path, test_path = run / VAL_PREDICTIONS_FILE, run / PREDICTIONS_FILE
    fitted_on = val_path if val_path.is_file() else test_path
    if not fitted_on.is_file():
        raise ThresholdError(f"{run}: neither {VAL_PREDICTIONS_FILE} nor {PREDICTIONS_FILE} (run an evaluation first)")
    val = read_predictions(fitted_on)
    if not isinstance(val, Predictions):
        raise ThresholdError(f"{fitted_on}: re-ID predictions are a ranking; there is nothing to threshold")
    if not val.multilabel:
        return _calibrate_single_label(run, test_path if test_path.is_file() else fitted_on, n_bins)
    thresholds, skipped = fit_thresholds(val.probs, val.targets, method)
    evaluated = read_predictions(test_path) if test_path.is_file() else val
    if list(evaluated.class_names) != list(val.class_names):
        raise ThresholdError(f"{test_path}: its classes differ from {fitted_on}'s")
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    train_counts = (metrics or {}).get("train_class_counts")
    if bins is None and train_counts is not None and (metrics or {}).get("frequency_bins_default"):
        bins = tuple((metrics or {})["frequency_bins_default"])
    rep = report(evaluated, thresholds, n_bins=n_bins, train_counts=train_counts, bins=bins)
    note = None
    if fitted_on == test_path:
        note = (f"no {VAL_PREDICTIONS_FILE} (this run has no separate validation split): thresholds were fitted "
                f"and scored on {PREDICTIONS_FILE} itself, so the report is optimistic")
    out = {"format": 1, "method": method, "fitted_on": fitted_on.name, "note": note,
           "class_names": list(val.class_names),
           "thresholds": {n: float(t) for n, t in zip(val.class_names, thresholds)},
           "kept_at_0.5_no_validation_positive": [val.class_names[j] for j in skipped], "report": rep}
    atomic_write_text(json.dumps(to_plain(out), indent=2) + "\n", run / THRESHOLDS_FILE)
    plot_reliability(rep["reliability"], run / RELIABILITY_FILE,
                     title=f"{run.name}: reliability on {rep['evaluated_on']}")
    if metrics is not None:
        metrics["thresholds"] = {"file": THRESHOLDS_FILE, "method": method, "fitted_on": fitted_on.name,
                                 "ece": rep["ece"], "macro_f1_at_thresholds": rep["macro"]["f1"],
                                 "reliability_diagram": RELIABILITY_FILE}
        atomic_write_text(json.dumps(metrics, indent=2) + "\n", metrics_path)
    return out


def _calibrate_single_label(run: Path, evaluated_path: Path, n_bins: int) -> dict[str, Any]:
    """A single-label run (the arg-max decides, no per-class threshold): the top-1 calibration report,
    ``calibration.json``, ``reliability.png`` and a ``calibration`` summary in metrics.json."""
    preds = read_predictions(evaluated_path)
    curve = reliability_curve(preds.probs, preds.targets, n_bins)
    top1 = float((preds.probs.argmax(axis=1) == preds.targets).mean())
    rep = {"evaluated_on": evaluated_path.name, "ece": curve["ece"], "top1_accuracy": top1,
           "mean_confidence": float(preds.probs.max(axis=1).mean()), "reliability": curve}
    out = {"format": 1, "method": "top-1 calibration", "fitted_on": None, "thresholds": None,
           "note": "single-label predictions: the arg-max decides, so no per-class thresholds are fitted; "
                   "the report is the top-1 calibration", "class_names": list(preds.class_names), "report": rep}
    atomic_write_text(json.dumps(to_plain(out), indent=2) + "\n", run / CALIBRATION_FILE)
    plot_reliability(curve, run / RELIABILITY_FILE, title=f"{run.name}: top-1 reliability on {evaluated_path.name}")
    metrics_path = run / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        metrics["calibration"] = {"file": CALIBRATION_FILE, "ece_top1": curve["ece"], "reliability_diagram":
                                  RELIABILITY_FILE}
        atomic_write_text(json.dumps(metrics, indent=2) + "\n", metrics_path)
    return out


def load_thresholds(run_dir_or_checkpoint: str | Path) -> dict[str, float]:
    """``{class name: threshold}`` from a run folder, a ``thresholds.json``, a checkpoint file beside one,
    or a safetensors export whose metadata holds them (``METADATA_KEY``).

    Raises:
        ThresholdError: nothing found, naming where it looked.
    """
    path = Path(run_dir_or_checkpoint)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if METADATA_KEY not in meta:
            raise ThresholdError(f"{path}: its metadata holds no thresholds (export after python -m common.thresholds)")
        return {k: float(v) for k, v in json.loads(meta[METADATA_KEY])["thresholds"].items()}
    candidates = [path] if path.name == THRESHOLDS_FILE else [path / THRESHOLDS_FILE, path.parent / THRESHOLDS_FILE]
    for c in candidates:
        if c.is_file():
            try:
                return {k: float(v) for k, v in json.loads(c.read_text(encoding="utf-8"))["thresholds"].items()}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ThresholdError(f"{c}: not a thresholds file ({type(exc).__name__}: {exc})") from None
    raise ThresholdError(f"no {THRESHOLDS_FILE} for {path} (looked in {', '.join(str(c) for c in candidates)}); "
                         "run python -m common.thresholds RUN_DIR first")


def thresholds_metadata(run_dir: str | Path) -> dict[str, str]:
    """Safetensors metadata entry for a run's thresholds (empty when it has none)."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {METADATA_KEY: json.dumps({k: data[k] for k in ("method", "fitted_on", "thresholds")})}


def get_args_parser() -> argparse.ArgumentParser:
    """The ``python -m common.thresholds`` parser."""
    parser = argparse.ArgumentParser("python -m common.thresholds", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding predictions_val.csv / predictions.csv")
    parser.add_argument("--method", default="f1", help="f1, youden or sensitivity=X (default: f1)")
    parser.add_argument("--n_bins", type=int, default=15, help="reliability / ECE bins (default: 15)")
    parser.add_argument("--bins", default=None, metavar="LOW,HIGH",
                        help="head / medium / tail cut-offs in training positives per class (default: the run's "
                             "frequency_bins_default, e.g. cxrlt 100,1000; else none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        bins = None
        if args.bins is not None:
            try:
                low, high = (float(x) for x in args.bins.split(","))
            except ValueError:
                raise ThresholdError(f"--bins {args.bins}: expected LOW,HIGH") from None
            bins = (low, high)
        if args.n_bins < 1:
            raise ThresholdError(f"--n_bins must be >= 1, got {args.n_bins}")
        out = fit_run(args.run_dir, args.method, n_bins=args.n_bins, bins=bins)
    except (ThresholdError, PredictionsError) as exc:
        print(f"thresholds: error: {exc}", file=sys.stderr)
        return 2
    rep = out["report"]
    if out["thresholds"] is None:  # single-label
        print(f"{out['note']}: top-1 accuracy {rep['top1_accuracy']:.4f}, mean confidence "
              f"{rep['mean_confidence']:.4f}, ECE {rep['ece']:.4f} on {rep['evaluated_on']}")
        print(f"wrote {Path(args.run_dir) / CALIBRATION_FILE} and {Path(args.run_dir) / RELIABILITY_FILE}")
        return 0
    print(f"thresholds ({out['method']}) fitted on {out['fitted_on']}, scored on {rep['evaluated_on']}: "
          f"macro P {rep['macro']['precision']:.4f} R {rep['macro']['recall']:.4f} F1 {rep['macro']['f1']:.4f}, "
          f"ECE {rep['ece']:.4f}")
    if out["note"]:
        print(f"note: {out['note']}")
    for name, entry in rep["per_class"].items():
        print(f"  {name:<28} t={entry['threshold']:.4f} P={entry['precision']:.4f} R={entry['recall']:.4f} "
              f"F1={entry['f1']:.4f}")
    for group in ("head", "medium", "tail"):
        g = rep.get("frequency_bins", {}).get(group)
        if g:
            ap = "-" if g["AP"] is None else f"{g['AP']:.4f}"
            f1 = "-" if g["F1"] is None else f"{g['F1']:.4f}"
            print(f"  {group}: {len(g['classes'])} classes, mean AP {ap}, mean F1 {f1}")
    print(f"wrote {Path(args.run_dir) / THRESHOLDS_FILE} and {Path(args.run_dir) / RELIABILITY_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
