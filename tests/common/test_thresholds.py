"""common.thresholds: fitted cuts on known cases, calibration of a calibrated model (issue 19 §4)."""

import json

import numpy as np
import pytest

from common.predictions import predictions_csv_text
from common.thresholds import (
    ThresholdError,
    fit_run,
    fit_thresholds,
    load_thresholds,
    reliability_curve,
    scores_at,
)

# F1 of "score >= cut" for each cut (3 positives): 0.9 -> 2/4, 0.8 -> 4/5, 0.7 -> 4/6, 0.6 -> 6/7, 0.5 -> 6/8
SCORES = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]])
TARGETS = np.array([[1], [1], [0], [1], [0], [0]])


# Youden (TPR - FPR) of [1, 0, 1, 1, 0, 0]: 0.9 -> 1/3, 0.8 -> 0, 0.7 -> 1/3, 0.6 -> 2/3, 0.5 -> 1/3
YOUDEN_TARGETS = np.array([[1], [0], [1], [1], [0], [0]])


@pytest.mark.parametrize(("method", "targets", "cut"), [
    ("f1", TARGETS, 0.6), ("youden", YOUDEN_TARGETS, 0.6), ("sensitivity=0.9", TARGETS, 0.6),
    ("sensitivity=0.6", TARGETS, 0.8), ("sensitivity=0.3", YOUDEN_TARGETS, 0.9)])
def test_fitted_cut_is_the_known_optimum(method, targets, cut):
    thresholds, skipped = fit_thresholds(SCORES, targets, method)
    assert thresholds[0] == cut and skipped == []
    if method == "f1":
        assert scores_at(SCORES, targets, thresholds)["f1"][0] == pytest.approx(6 / 7)


def test_class_without_positive_keeps_half_and_bad_method_is_refused():
    thresholds, skipped = fit_thresholds(np.c_[SCORES, SCORES], np.c_[TARGETS, 0 * TARGETS], "f1")
    assert thresholds.tolist() == [0.6, 0.5] and skipped == [1]
    with pytest.raises(ThresholdError, match="sensitivity=X"):
        fit_thresholds(SCORES, TARGETS, "precision")
    with pytest.raises(ThresholdError, match=r"\(0, 1\]"):
        fit_thresholds(SCORES, TARGETS, "sensitivity=1.5")


def test_reliability_of_a_calibrated_model_is_the_diagonal():
    rng = np.random.default_rng(0)
    p = rng.random((100_000, 3))
    y = (rng.random(p.shape) < p).astype(float)  # P(y = 1 | p) = p: perfectly calibrated
    curve = reliability_curve(p, y, n_bins=10)
    np.testing.assert_allclose(curve["frequency"], curve["confidence"], atol=0.01)
    assert curve["ece"] < 0.005
    overconfident = reliability_curve(np.clip(p * 1.5 - 0.25, 0, 1), y, n_bins=10)
    assert overconfident["ece"] > 0.05


def test_fit_run_on_validation_then_report_on_test(tmp_path):
    rng = np.random.default_rng(1)

    def write(name, n):
        t = (rng.random((n, 2)) < 0.3).astype(float)
        s = np.clip(0.5 * t + 0.6 * rng.random((n, 2)), 0, 1)
        (tmp_path / name).write_text(predictions_csv_text([f"{name}{i}" for i in range(n)], t, s,
                                                          class_names=["a", "b"]))

    write("predictions_val.csv", 200)
    write("predictions.csv", 100)
    (tmp_path / "metrics.json").write_text(json.dumps({"best": {}}))
    out = fit_run(tmp_path, "f1")
    assert out["fitted_on"] == "predictions_val.csv" and out["note"] is None
    assert out["report"]["evaluated_on"] == "predictions.csv" and out["report"]["samples"] == 100
    assert set(out["report"]["per_class"]["a"]) == {"threshold", "precision", "recall", "f1"}
    assert (tmp_path / "reliability.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["thresholds"]["fitted_on"] == "predictions_val.csv"
    assert load_thresholds(tmp_path) == out["thresholds"]
    with pytest.raises(ThresholdError, match="common.thresholds RUN_DIR first"):
        load_thresholds(tmp_path / "other_run" / "checkpoint_best.pth")


def test_single_label_run_gets_the_top1_calibration_report(tmp_path):
    # xmnet / dcal FGVC: the arg-max decides, so no thresholds; the report is the top-1 calibration. A
    # model whose top-class confidence c is right with probability c is calibrated: ECE near 0.
    rng = np.random.default_rng(2)
    n, k = 20_000, 4
    conf = rng.uniform(0.3, 1.0, n)
    top = rng.integers(0, k, n)
    probs = np.full((n, k), 0.0)
    probs[np.arange(n), top] = conf
    for j in range(n):  # the rest of the mass below the top class
        others = [c for c in range(k) if c != top[j]]
        probs[j, others] = (1 - conf[j]) / (k - 1)
    right = rng.random(n) < conf
    target = np.where(right, top, (top + 1 + rng.integers(0, k - 1, n)) % k)
    (tmp_path / "predictions.csv").write_text(predictions_csv_text([f"s{i}" for i in range(n)], target, probs,
                                                                   class_names=list("abcd")))
    (tmp_path / "metrics.json").write_text(json.dumps({"best": {}}))
    out = fit_run(tmp_path, "f1")
    assert out["thresholds"] is None and "arg-max" in out["note"]
    rep = out["report"]
    assert rep["ece"] < 0.02 and rep["top1_accuracy"] == pytest.approx(right.mean())
    assert rep["mean_confidence"] == pytest.approx(conf.mean())
    assert (tmp_path / "calibration.json").is_file() and (tmp_path / "reliability.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["calibration"]["ece_top1"] == rep["ece"]
