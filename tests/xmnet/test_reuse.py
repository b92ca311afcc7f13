"""xmnet reruns: the Optuna study is reused (its finished trials counted) only when its fingerprint equals the
run's; otherwise the run stops before any training (issue 17 §1)."""

import json

import optuna
import pytest

from common.fingerprint import FingerprintMismatch
from tests.xmnet.helpers import tiny
from xmnet import Train, engine_xmnet
from xmnet.xgb_stage import sqlite_url


def _main(xm_root, out, *extra):
    return Train.main(Train.parse_args(tiny(xm_root, out, "--cls_included", "--xmnet", "--plots", "false",
                                            "--save_masks", "0", *extra)))


def _no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(engine_xmnet, "fit", refuse)


def _trial_numbers(out):
    return [t["number"] for t in json.loads((out / "optuna_study_summary.json").read_text())["trials"]]


@pytest.mark.parametrize("changed", [("--lr", "0.01", "--lr 0.05 -> 0.01"),
                                     ("--seed", "2", "--seed 1 -> 2"),
                                     ("--backbone_class", "resnet34", "--backbone_class resnet18 -> resnet34")])
def test_study_rerun_with_another_flag_is_refused_before_training(xm_root, tmp_path, monkeypatch, changed):
    out = tmp_path / "run"
    _main(xm_root, out)
    assert _trial_numbers(out) == [0, 1]
    flag, value, expected = changed
    _no_training(monkeypatch)
    with pytest.raises(FingerprintMismatch) as info:
        _main(xm_root, out, flag, value)
    message = str(info.value)
    assert expected in message and "2 finished trials" in message and "\n" not in message
    assert "--overwrite" in message and "--output_dir" in message


def test_study_rerun_with_the_same_flags_reuses_its_trials_and_overwrite_starts_again(xm_root, tmp_path,
                                                                                      monkeypatch):
    out = tmp_path / "run"
    _main(xm_root, out)
    first = json.loads((out / "optuna_study_summary.json").read_text())

    def no_trials(*a, **k):
        raise AssertionError("a trial was run")

    with monkeypatch.context() as m:
        m.setattr(optuna.study.Study, "optimize", no_trials)
        # flags that do not change the study: threads, workers, parallel trials, pictures
        _main(xm_root, out, "--optuna_n_jobs", "1", "--xgb_nthread", "1", "--plots", "true")
    again = json.loads((out / "optuna_study_summary.json").read_text())
    assert again["trials"] == first["trials"] and again["best_accuracy"] == first["best_accuracy"]
    # --overwrite deletes the old study: a new one with the new flags
    _main(xm_root, out, "--seed", "2", "--overwrite")
    study = optuna.load_study(study_name=f"xmnet_xgboost_{engine_xmnet.run_name(Train.parse_args(tiny(xm_root, out, '--cls_included', '--xmnet')))}",
                              storage=sqlite_url(out / "optuna_study.db"))
    assert study.user_attrs["fingerprint"]["args"]["seed"] == 2
    assert len(study.trials) == 2


def test_study_without_fingerprint_is_refused(xm_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    name = engine_xmnet.run_name(Train.parse_args(tiny(xm_root, out, "--cls_included", "--xmnet")))
    old = optuna.create_study(study_name=f"xmnet_xgboost_{name}", storage=sqlite_url(out / "optuna_study.db"))
    old.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0,
                                            user_attrs={"test_accuracy": 0.5}))
    _no_training(monkeypatch)
    with pytest.raises(FingerprintMismatch, match="has no fingerprint.*--overwrite"):
        _main(xm_root, out)
