"""common.metrics.multilabel / classification against scikit-learn and slow reference loops."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from common.metrics import (
    average_precision,
    classes_without_positives,
    f1_scores,
    macro_auc,
    mean_average_precision,
    multilabel_metrics,
    per_class_accuracy,
    roc_auc_per_class,
    topk_accuracy,
)


def _tied_data(seed: int, n: int = 60, c: int = 6, levels: int = 5):
    """Integer-rounded scores (many ties) and sparse targets; column 0 has no positive."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(n, c)) * levels / 3).astype(np.float64)
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    targets[:, 0] = 0
    targets[0, 1:] = 1  # every other class has a positive
    targets[1, 1:] = 0  # ... and a negative
    return scores, targets


def _ap_loop(scores: np.ndarray, targets: np.ndarray) -> float:
    """Slow reference: walk the distinct thresholds from high to low, AP = sum P_k * (R_k - R_{k-1})."""
    num_pos = targets.sum()
    if num_pos == 0:
        return 0.0
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= thr
        tp = float((pred & (targets == 1)).sum())
        precision, recall = tp / pred.sum(), tp / num_pos
        ap += precision * (recall - prev_recall)
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_and_loop_with_ties(seed):
    scores, targets = _tied_data(seed)
    ap = average_precision(scores, targets)
    assert ap.shape == (scores.shape[1],)
    assert ap[0] == 0.0
    for c in range(1, scores.shape[1]):
        expected = average_precision_score(targets[:, c], scores[:, c])
        assert ap[c] == pytest.approx(expected, abs=1e-12)
        assert ap[c] == pytest.approx(_ap_loop(scores[:, c], targets[:, c]), abs=1e-12)


def test_average_precision_hand_values():
    # ranking + - +: AP = (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7], [1, 0, 1])[0] == pytest.approx(5 / 6)
    # all scores tied: one threshold, AP = precision at full recall = prevalence
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 1])[0] == pytest.approx(0.5)
    # a tie between a positive and a negative at the top credits the tie-group precision (1/2),
    # not 1.0 as an order-dependent tie break would
    assert average_precision([0.9, 0.9, 0.1], [1, 0, 0])[0] == pytest.approx(0.5)


def test_average_precision_accepts_torch_bf16():
    scores, targets = _tied_data(3)
    t_scores = torch.from_numpy(scores).to(torch.bfloat16)
    ap_torch = average_precision(t_scores, torch.from_numpy(targets))
    ap_np = average_precision(t_scores.float().numpy(), targets)
    np.testing.assert_array_equal(ap_torch, ap_np)


def test_mean_average_precision_flags_no_positive_classes(caplog):
    scores, targets = _tied_data(4)
    targets[:, 3] = 0
    names = [f"c{i}" for i in range(scores.shape[1])]
    with caplog.at_level(logging.WARNING, logger="common.metrics.multilabel"):
        m, flagged = mean_average_precision(scores, targets, class_names=names)
    assert flagged == ["c0", "c3"]
    warnings = [r for r in caplog.records if "no positive" in r.getMessage()]
    assert len(warnings) == 1 and "c0" in warnings[0].getMessage() and "c3" in warnings[0].getMessage()
    per_class = [average_precision_score(targets[:, c], scores[:, c]) if targets[:, c].any() else 0.0
                 for c in range(scores.shape[1])]
    assert m == pytest.approx(np.mean(per_class), abs=1e-12)
    assert classes_without_positives(targets) == [0, 3]


def test_roc_auc_matches_sklearn_with_ties_and_skips_undefined():
    scores, targets = _tied_data(5)
    auc = roc_auc_per_class(scores, targets)
    assert np.isnan(auc[0])
    expected = roc_auc_score(targets[:, 1:], scores[:, 1:], average=None)
    np.testing.assert_allclose(auc[1:], expected, atol=1e-12)
    assert macro_auc(scores, targets) == pytest.approx(expected.mean(), abs=1e-12)
    # all classes defined: equals sklearn's default macro average (what CHARM prints)
    assert macro_auc(scores[:, 1:], targets[:, 1:]) == pytest.approx(
        roc_auc_score(targets[:, 1:], scores[:, 1:]), abs=1e-12
    )


@pytest.mark.parametrize("layout", ["c_order", "fortran_order"])
def test_ap_auc_large_input_parallel_path_matches_sklearn(layout, monkeypatch):
    # >= 200,000 scores with 2 torch threads takes the thread-pool path; half the columns carry
    # ties, one column is all-positive (AUC undefined), and a Fortran-ordered matrix takes the
    # already-transposed branch.
    rng = np.random.default_rng(7)
    n, c = 20_000, 12
    targets = (rng.random((n, c)) < 0.1).astype(np.int64)
    scores = rng.normal(size=(n, c)) + targets
    scores[:, ::2] = np.round(scores[:, ::2], 1)
    targets[:, 5] = 1
    if layout == "fortran_order":
        scores = np.asfortranarray(scores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    ap = average_precision(scores, targets)
    auc = roc_auc_per_class(scores, targets)
    for j in range(c):
        assert ap[j] == pytest.approx(average_precision_score(targets[:, j], scores[:, j]), abs=1e-9)
        if j == 5:
            assert np.isnan(auc[j])
        else:
            assert auc[j] == pytest.approx(roc_auc_score(targets[:, j], scores[:, j]), abs=1e-9)


def test_f1_matches_sklearn_zero_division_0():
    scores, targets = _tied_data(6)
    scores = scores / 2.0  # logits around 0, so the threshold splits them
    pred = (1 / (1 + np.exp(-scores)) > 0.5).astype(int)
    out = f1_scores(scores, targets, 0.5, from_logits=True)
    assert out["f1_micro"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0))
    assert out["f1_macro"] == pytest.approx(f1_score(targets, pred, average="macro", zero_division=0))
    np.testing.assert_allclose(out["per_class_f1"], f1_score(targets, pred, average=None, zero_division=0))


def test_multilabel_metrics_keys_values_and_json():
    scores, targets = _tied_data(7)
    probs = 1 / (1 + np.exp(-scores))
    names = [f"cls{i}" for i in range(scores.shape[1])]
    out = multilabel_metrics(torch.from_numpy(scores).float(), torch.from_numpy(targets), class_names=names)
    assert set(out) == {"mAP", "per_class_ap", "no_positive_classes", "f1_micro", "f1_macro", "acc1", "auc",
                        "per_class_auc"}
    assert out["no_positive_classes"] == ["cls0"]
    assert out["mAP"] == pytest.approx(np.mean(out["per_class_ap"]))
    assert out["acc1"] == pytest.approx(((probs > 0.5) == targets).mean())
    assert out["per_class_auc"][0] is None
    assert out["auc"] == pytest.approx(roc_auc_score(targets[:, 1:], scores[:, 1:]))
    # probabilities in, same thresholded metrics; threshold is strict (p == 0.5 is negative)
    out_p = multilabel_metrics(probs, targets, from_logits=False)
    assert out_p["acc1"] == pytest.approx(out["acc1"]) and out_p["f1_macro"] == pytest.approx(out["f1_macro"])
    half = multilabel_metrics(np.full((2, 1), 0.5), np.array([[1], [0]]), from_logits=False)
    assert half["acc1"] == pytest.approx(0.5) and half["f1_micro"] == 0.0
    json.dumps(out, allow_nan=False)  # metrics.json-safe


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), "must both be"),
        (np.zeros((4, 2)), np.full((4, 2), 2), "must be 0/1"),
        (np.array([[np.nan], [0.0]]), np.array([[1], [0]]), "non-finite"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "empty"),
    ],
)
def test_multilabel_metrics_rejects_bad_input(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        multilabel_metrics(scores, targets)


def test_multilabel_metrics_class_names_length_checked():
    with pytest.raises(ValueError, match="class_names has 1 names"):
        multilabel_metrics(np.zeros((3, 2)), np.ones((3, 2)), class_names=["a"])


def test_topk_accuracy_matches_loop():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(50, 7))
    labels = rng.integers(0, 7, size=50)
    out = topk_accuracy(torch.from_numpy(logits), torch.from_numpy(labels), topk=(1, 3, 5, 10))
    for k in (1, 3, 5):
        ref = np.mean([labels[i] in np.argsort(-logits[i])[:k] for i in range(50)])
        assert out[f"acc{k}"] == pytest.approx(ref)
    assert out["acc10"] == 1.0  # k >= C: the target is always among all C classes
    assert set(out) == {"acc1", "acc3", "acc5", "acc10"}
    with pytest.raises(ValueError, match="targets must lie in"):
        topk_accuracy(logits, np.full(50, 7))


def test_per_class_accuracy_matches_loop_and_marks_absent_classes():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(40, 5))
    labels = rng.integers(0, 4, size=40)  # class 4 never occurs
    acc = per_class_accuracy(logits, labels)
    pred = logits.argmax(1)
    for c in range(4):
        assert acc[c] == pytest.approx((pred[labels == c] == c).mean())
    assert np.isnan(acc[4])


def test_metrics_on_digits_linear_model_learn_and_agree_with_sklearn():
    """A linear model trained on real digit images: mAP / top-1 well above chance, equal to sklearn."""
    digits = load_digits()
    x = torch.tensor(digits.data[:1000] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:1000])
    x_tr, y_tr, x_te, y_te = x[:700], y[:700], x[700:], y[700:]
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.normal_(0, 0.01, generator=gen)
        model.bias.zero_()
    onehot_tr = torch.nn.functional.one_hot(y_tr, 10).float()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    before = multilabel_metrics(model(x_te).detach(), torch.nn.functional.one_hot(y_te, 10))["mAP"]
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x_tr), onehot_tr).backward()
        opt.step()
    logits = model(x_te).detach()
    onehot_te = torch.nn.functional.one_hot(y_te, 10)
    out = multilabel_metrics(logits, onehot_te)
    assert out["mAP"] > 0.9 > before + 0.3
    assert out["mAP"] == pytest.approx(
        average_precision_score(onehot_te.numpy(), logits.numpy(), average="macro"), abs=1e-9
    )
    assert out["auc"] == pytest.approx(roc_auc_score(onehot_te.numpy(), logits.numpy()), abs=1e-9)
    assert topk_accuracy(logits, y_te, topk=(1,))["acc1"] > 0.85


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column", [0, 2])  # column 0 has no positive, so its AP needs no ranking
def test_rank_metrics_refuse_non_finite_scores_in_any_column(bad, column):
    scores, targets = _tied_data(9)
    scores[5, column] = bad
    for fn in (average_precision, roc_auc_per_class, macro_auc, multilabel_metrics):
        with pytest.raises(ValueError, match="scores contain 1 non-finite values"):
            fn(scores, targets)
    with pytest.raises(ValueError, match="non-finite"):
        mean_average_precision(scores, targets)


def test_integer_bool_and_float_targets_validated_alike():
    scores, targets = _tied_data(10)
    expected = average_precision(scores, targets)
    for t in (targets.astype(bool), targets.astype(np.int8), targets.astype(np.float32)):
        np.testing.assert_array_equal(average_precision(scores, t), expected)
    for bad in (targets * 2, targets - 1, targets + 0.5):
        with pytest.raises(ValueError, match="targets must be 0/1"):
            average_precision(scores, bad)
