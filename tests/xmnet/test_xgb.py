"""XGBoost + Optuna stage on real image features (scikit-learn's handwritten digits), resume of a
killed study from its SQLite storage, protocols and outputs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import xgboost as xgb

from xmnet.xgb_stage import SEARCH_SPACE, FeatureSet, run_study, sqlite_url

ROOT = Path(__file__).resolve().parents[2]


def digits_features(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    p = np.random.default_rng(seed).permutation(len(y))
    tr, va, te = p[:700], p[700:1000], p[1000:1400]
    return FeatureSet(x[tr], y[tr]), FeatureSet(x[va], y[va]), FeatureSet(x[te], y[te])


def test_search_space_is_the_originals():
    assert SEARCH_SPACE == {"lambda": (1e-8, 1.0, True), "alpha": (1e-8, 1.0, True), "subsample": (0.2, 1.0, False),
                            "colsample_bytree": (0.2, 1.0, False), "eta": (1e-8, 1.0, True),
                            "gamma": (1e-8, 1.0, True)}


def test_xgboost_stage_on_digit_features_beats_chance(tmp_path):
    train, val, test = digits_features()
    s = run_study(train, test, val=val, num_class=10, output_dir=tmp_path, n_trials=4, n_estimators=30, nthread=1)
    # chance is 0.1 on 10 balanced classes; a linear booster on digit pixels reaches far above it
    assert s["best_accuracy"] > 0.5 and s["overall_best"] >= s["best_accuracy"]
    assert s["n_trials"] == 4 and s["num_class"] == 10 and s["feature_dim"] == 64 and s["eval_on"] == "val"
    # the best trial is the one with the lowest validation log-loss
    assert s["best_value"] == min(t["value"] for t in s["trials"])
    assert s["overall_best"] == max(t["test_accuracy"] for t in s["trials"])
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "xgboost_best.json"))  # XGBoost's JSON format
    cfg = json.loads(booster.save_config())
    assert cfg["learner"]["gradient_booster"]["name"] == "gblinear"
    assert cfg["learner"]["learner_model_param"]["num_class"] == "10"
    acc = float((booster.predict(xgb.DMatrix(test.x)).argmax(1) == test.y).mean())
    assert acc == pytest.approx(s["refit_test_accuracy"])
    on_disk = json.loads((tmp_path / "optuna_study_summary.json").read_text())
    assert on_disk["best_accuracy"] == s["best_accuracy"] and (tmp_path / "optuna_study.db").is_file()


def test_original_protocol_uses_test_set_and_training_logloss(tmp_path):
    train, _, test = digits_features()
    s = run_study(train, test, num_class=10, output_dir=tmp_path, eval_on="test", n_trials=2, n_estimators=10,
                  nthread=1)
    assert s["eval_on"] == "test" and "optimistic" in s["note"]
    best = min(s["trials"], key=lambda t: t["value"])
    assert s["best_accuracy"] == best["test_accuracy"]
    with pytest.raises(ValueError, match="needs validation features"):
        run_study(train, test, num_class=10, output_dir=tmp_path, eval_on="val", n_trials=1)


def test_reextract_callable_is_called_every_trial(tmp_path):
    train, val, test = digits_features()
    calls = []

    def source(draw):
        calls.append(draw)
        return train

    s = run_study(source, test, val=val, num_class=10, output_dir=tmp_path, n_trials=3, n_estimators=5, nthread=1)
    # one per trial (draw = trials finished before it) + the refit of the best trial with its own draw
    assert calls == [0, 1, 2, s["best_trial"]]


def test_killed_study_resumes_with_finished_trials(tmp_path):
    storage = sqlite_url(tmp_path / "optuna_study.db")
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.xmnet.test_xgb import digits_features
        from xmnet.xgb_stage import run_study
        train, val, test = digits_features()
        def kill_after_two(study, trial):
            if len(study.trials) >= 2:
                os._exit(9)  # a hard kill: no cleanup, no summary
        run_study(train, test, val=val, num_class=10, output_dir={str(tmp_path)!r}, n_trials=5, n_estimators=5,
                  nthread=1, callbacks=[kill_after_two])
    """)
    r = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True)
    assert r.returncode == 9, r.stderr[-2000:]
    assert not (tmp_path / "optuna_study_summary.json").exists()
    study = optuna.load_study(study_name="xmnet_xgboost", storage=storage)
    before = [(t.number, t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"]
    assert len(before) == 2
    train, val, test = digits_features()
    s = run_study(train, test, val=val, num_class=10, output_dir=tmp_path, n_trials=5, n_estimators=5, nthread=1)
    assert s["n_trials"] == 5
    after = {t["number"]: (t["params"], t["value"]) for t in s["trials"]}
    for number, params, value in before:  # the finished trials are kept, not rerun
        assert after[number] == (params, value)


def _stage_inputs(xm_root, *extra):
    import torch

    from common.dist import DistContext
    from tests.xmnet.helpers import tiny
    from xmnet import Train
    from xmnet.backboneModels import XMNetModel
    from xmnet.leafvein2 import LeafVeinDataset

    torch.manual_seed(0)
    args = Train.parse_args(["--xmnet", "--cls_included", *tiny(xm_root, xm_root / "unused"), *extra])
    root = xm_root / "soybean_2_1"
    train = LeafVeinDataset(root, "train", train=True, crop=64, seed=1)
    test = LeafVeinDataset(root, "test", train=False, crop=64)
    model = XMNetModel("resnet18", 3, attention="xmnet")
    return args, model, train, test, root, DistContext(device=torch.device("cpu"))


def _captured_study(monkeypatch, xm_root, tmp_path, *extra):
    from xmnet import engine_xmnet

    seen = {}

    def fake_run_study(train, test, **kw):  # what the stage hands to the study
        seen.update(train=train, test=test, **kw)
        return {}

    monkeypatch.setattr(engine_xmnet, "run_study", fake_run_study)
    args, model, train, test, root, ctx = _stage_inputs(xm_root, *extra)
    engine_xmnet.xgboost_stage(args, model, train, test, root, ctx, tmp_path, "XMNet_Classification")
    return seen, model, train, test


def test_default_protocol_is_the_originals(xm_root, tmp_path, monkeypatch):
    """xmnet.md §7.2: every training feature is fitted, re-extracted through the augmenting loader in each
    trial (eval-mode network), and the test features drive early stopping."""
    import torch

    seen, model, train, test = _captured_study(monkeypatch, xm_root, tmp_path)
    assert seen["eval_on"] == "test" and seen["val"] is None
    assert callable(seen["train"])
    first, second = seen["train"](0), seen["train"](1)
    assert len(first.y) == len(second.y) == len(train) == 30  # 100 % of the training images, not 80 %
    assert sorted(first.y.tolist()) == sorted(train.labels)
    assert not np.allclose(first.x, second.x)  # another flip / crop in each trial
    model.eval()
    with torch.no_grad():  # the features of the augmented items, the network in eval mode
        items = [train[i][0] for i in range(len(train))]
        want = model(torch.stack(items))["features"].numpy()
    np.testing.assert_allclose(second.x, want, rtol=1e-4, atol=1e-5)
    assert len(seen["test"].y) == len(test)
    np.testing.assert_array_equal(seen["train"](0).x, first.x)  # a draw is reproducible (resume)


def test_validation_protocol_and_single_extraction_are_flags(xm_root, tmp_path, monkeypatch):
    seen, _, train, _ = _captured_study(monkeypatch, xm_root, tmp_path, "--xgb_eval_on", "val",
                                        "--no-xgb_reextract_train")
    assert seen["eval_on"] == "val"
    fit, val = seen["train"], seen["val"]
    assert isinstance(fit, FeatureSet) and len(fit.y) + len(val.y) == len(train) and len(val.y) == 6  # 20 %
