"""Bootstrap intervals from predictions.csv and `compare`'s intervals (issue 19 §3), pinned to closed forms."""

import json
import math

import numpy as np
import pytest

from common.bootstrap import Resampler, bootstrap_predictions, weighted_ap_auc
from common.compare import main
from common.metrics.multilabel import _per_class_ap_auc
from common.predictions import (
    Predictions,
    build_split_manifest,
    predictions_csv_text,
    read_predictions,
    write_split_manifest,
)

DV_CLASSES = ["Gun", "Knife", "Wrench", "Pliers", "Scissors", "Lighter", "Battery", "Bat", "Razor_blade",
              "Saw_blade", "Fireworks", "Hammer", "Screwdriver", "Dart", "Pressure_vessel"]


def _bernoulli_predictions(n: int, p: float, seed: int, per_patient: int = 1) -> Predictions:
    """Single-label predictions whose correctness is Bernoulli(p), shared by the images of a patient."""
    rng = np.random.default_rng(seed)
    correct = np.repeat(rng.random(n // per_patient) < p, per_patient)
    targets = np.zeros(n, dtype=np.int64)
    probs = np.where(correct[:, None], [[0.9, 0.1]], [[0.1, 0.9]])
    groups = {"patient": [str(i // per_patient) for i in range(n)]} if per_patient > 1 else {}
    return Predictions([str(i) for i in range(n)], targets, probs, ["a", "b"], groups)


def test_bootstrap_interval_of_a_bernoulli_mean_is_the_normal_interval():
    n = 2000
    preds = _bernoulli_predictions(n, 0.3, seed=0)
    p_hat = float((preds.probs.argmax(1) == preds.targets).mean())
    half = 1.96 * math.sqrt(p_hat * (1 - p_hat) / n)
    low, high = bootstrap_predictions(preds, n_boot=2000, seed=1)["intervals"]["acc1"]
    assert low == pytest.approx(p_hat - half, abs=0.15 * half)
    assert high == pytest.approx(p_hat + half, abs=0.15 * half)


def test_patients_are_resampled_whole():
    """4 images per patient with one outcome: the effective n is the number of patients, so the interval
    is twice as wide as the per-image one (sqrt 4)."""
    n, k = 4000, 4
    preds = _bernoulli_predictions(n, 0.3, seed=2, per_patient=k)
    p_hat = float((preds.probs.argmax(1) == preds.targets).mean())
    half = 1.96 * math.sqrt(p_hat * (1 - p_hat) / (n // k))
    boot = bootstrap_predictions(preds, n_boot=2000, seed=3)
    assert boot["unit"] == "patient" and boot["num_units"] == n // k
    low, high = boot["intervals"]["acc1"]
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    naive = bootstrap_predictions(preds, n_boot=2000, seed=3, by_group=False)["intervals"]["acc1"]
    assert (naive[1] - naive[0]) == pytest.approx((high - low) / 2, rel=0.2)


@pytest.mark.parametrize("grouped", [False, True])
def test_weighted_ap_auc_equals_the_metric_on_resampled_rows(grouped):
    rng = np.random.default_rng(1)
    n, c = 300, 4
    t = rng.random((n, c)) < 0.2
    t[:, 3] = False  # a class without positives: AP 0, AUC undefined
    s = np.round(rng.random((n, c)), 1)  # many tied scores
    rs = Resampler(n, groups=[str(i // 4) for i in range(n)] if grouped else None, n_boot=6, seed=3)
    ap, auc = weighted_ap_auc(s, t, rs)
    for b in range(6):
        idx = rs.indices(b)
        want_ap, want_auc = _per_class_ap_auc(s[idx], t[idx].astype(float))
        np.testing.assert_allclose(ap[b], want_ap, atol=1e-12)
        np.testing.assert_allclose(auc[b], want_auc, atol=1e-12)
    assert np.isnan(auc[:, 3]).all() and (ap[:, 3] == 0).all()


def _dvxray_run(folder, probs, targets, ids):
    folder.mkdir(parents=True)
    from common.metrics import average_precision

    ap = average_precision(probs, targets)
    (folder / "metrics.json").write_text(json.dumps({
        "monitor": "mAP", "best": {"mAP": float(ap.mean()), "per_class_ap": ap.tolist()},
        "final": {"mAP": float(ap.mean())}, "class_names": DV_CLASSES}))
    (folder / "predictions.csv").write_text(predictions_csv_text(ids, targets, probs, class_names=DV_CLASSES))
    write_split_manifest(folder, build_split_manifest({"val": {"ids": ids}}))


def test_compare_gives_intervals_and_says_whether_the_published_number_is_inside(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 400
    targets = (rng.random((n, 15)) < 0.2).astype(float)
    good = np.clip(targets * 0.8 + rng.random((n, 15)) * 0.9, 0, 1)  # a good ranking: mAP ~ 0.99
    ids = [f"img{i}" for i in range(n)]
    _dvxray_run(tmp_path / "run", good, targets, ids)
    csv_out = tmp_path / "cmp.csv"
    assert main([str(tmp_path / "run"), "--paper", "dvxray", "--entry", "mcbu", "--entry",
                 "dagnet_ourv3_convnext_test", "--bootstrap", "200", "--csv", str(csv_out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("entry"))
    assert "95% CI" in header and "in CI" in header
    row = next(line for line in text.splitlines() if line.startswith("mcbu "))
    assert " NO " in row  # 0.9334 is below an interval around ~0.99
    import csv

    rows = list(csv.DictReader(csv_out.open()))
    head = rows[0]
    assert float(head["ci_low"]) <= float(head["run"]) <= float(head["ci_high"])
    assert head["published_in_ci"] == "False" and "bootstrap 200 x sample" in head["ci_method"]
    assert 0.95 < float(head["ci_low"]) < float(head["ci_high"]) < 1.0
    per_class = [r for r in rows if r["class"]]
    assert len(per_class) == 15 and all(r["ci_low"] != "" for r in per_class)  # every per-class row has one
    # same seed, same interval; the JSON names the resampling
    assert main([str(tmp_path / "run"), "--paper", "dvxray", "--entry", "mcbu", "--bootstrap", "200", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["rows"][0]["ci_low"] == pytest.approx(float(head["ci_low"]))
    assert read_predictions(tmp_path / "run").probs.shape == (n, 15)


def test_runs_on_different_splits_are_not_averaged(tmp_path, capsys):
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 15)) < 0.3).astype(float)
    probs = rng.random((50, 15))
    _dvxray_run(tmp_path / "a", probs, targets, [f"i{i}" for i in range(50)])
    _dvxray_run(tmp_path / "b", probs, targets, [f"i{i}" for i in range(1, 51)])
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--paper", "dvxray", "--entry", "mcbu"]) == 2
    err = capsys.readouterr().err
    assert "split 'val' differs" in err and "not averaged" in err
