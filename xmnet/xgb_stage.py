"""XGBoost + Optuna stage of XMNet (HEAD ``Train.py`` after training; xmnet.md §7.2).

The search space is the original's: gblinear booster, ``multi:softprob``, lambda, alpha, eta, gamma in
[1e-8, 1] (log), subsample and colsample_bytree in [0.2, 1] (both, like gamma, are tree-booster
parameters without effect on gblinear: quirk 12), early stopping after 30 rounds, seed 1.

Two protocols (``eval_on``):

* ``test`` (the original, optimistic; ``Train.py``'s default): the booster fits every training feature,
  ``eval_set`` = the test features drive early stopping, the objective is the *training* log-loss, and
  "overall_best" is the maximum test accuracy over all trials, i.e. model selection on the test set.
* ``val`` (``--xgb_eval_on val``): early stopping and the objective (log-loss) on a validation part
  carved from the training features (the booster fits the rest); the best trial is the one with the
  lowest validation log-loss; its test accuracy is reported.

Both protocols report ``best_accuracy`` (test accuracy of the best trial) and ``overall_best`` (max
over trials, optimistic) as the original logs do. The study lives in Optuna storage (SQLite in the
output folder by default), so a killed study resumes with its finished trials; ``n_trials`` is the
total number of finished trials wanted. The sampler's random state is not in the storage, so with
``n_jobs=1`` the TPE sampler of each trial is seeded from ``(seed, finished trials so far)``: a resumed
study suggests what the uninterrupted one would have (a fresh ``TPESampler(seed)`` would repeat the
first trials' random start-up points). A trial cut short by a kill keeps its number and is marked failed
(default storage only: a shared ``storage`` may hold other processes' running trials), so the trial
numbers after it are one higher than in an uninterrupted study; parameters, values and the best trial's
result are the same.

A study is reused (its finished trials counted) only when its fingerprint (the study's user attribute
``fingerprint``: the flags and inputs behind the features and the search, see
``engine_xmnet.study_fingerprint``) equals this run's: :func:`check_study` is called before any training and
stops a rerun with other flags (``--overwrite`` deletes the old study).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import atomic_write_text
from common.fingerprint import Fingerprint, check

_logger = logging.getLogger(__name__)

EARLY_STOPPING_ROUNDS = 30
SEARCH_SPACE = {  # name: (low, high, log)
    "lambda": (1e-8, 1.0, True),
    "alpha": (1e-8, 1.0, True),
    "subsample": (0.2, 1.0, False),
    "colsample_bytree": (0.2, 1.0, False),
    "eta": (1e-8, 1.0, True),
    "gamma": (1e-8, 1.0, True),
}


@dataclass
class FeatureSet:
    """Cached pooled features of one split (float32 N x D) and 0-based labels (N,)."""

    x: np.ndarray
    y: np.ndarray


def sqlite_url(path: str | Path) -> str:
    """Optuna RDB URL of a SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


STUDY_FILES = ("xgboost_best.json", "optuna_study_summary.json")  # what a study's result leaves in output_dir


def _open_error(storage: str, exc: Exception) -> ValueError:
    return ValueError(f"--optuna_storage {storage}: cannot open the study ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''})")


def check_study(storage: str | None, output_dir: str | Path, study_name: str, fingerprint: Fingerprint, *,
                overwrite: bool = False) -> None:
    """Before any work: refuse to reuse a study whose finished trials were made with other flags or inputs.

    Args:
        storage: ``--optuna_storage`` (None: the SQLite file ``optuna_study.db`` in ``output_dir``).
        study_name: the study that :func:`run_study` would reopen.
        fingerprint: this run's.
        overwrite: delete the old study (and its summary and booster files) instead.

    Raises:
        common.fingerprint.FingerprintMismatch: finished trials with another (or without a) fingerprint.
    """
    import optuna

    out = Path(output_dir)
    if storage is None:
        if not (out / "optuna_study.db").is_file():
            return
        storage = sqlite_url(out / "optuna_study.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if study_name not in optuna.study.get_all_study_names(storage):
            return
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:  # bad URL, unreachable database
        raise _open_error(storage, exc) from None
    if overwrite:
        _logger.info("--overwrite: deleting the optuna study '%s' in %s", study_name, storage)
        optuna.delete_study(study_name=study_name, storage=storage)
        for name in STUDY_FILES:
            (out / name).unlink(missing_ok=True)
        return
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if finished == 0:  # nothing would be reused
        return
    check(Fingerprint.from_dict(study.user_attrs.get("fingerprint")), fingerprint,
          what=f"the optuna study '{study_name}' in {storage} ({finished} finished trials)",
          ways="pass --overwrite to delete it and search again, or choose another --output_dir "
               "(or --optuna_study_name)")


def trial_seed(seed: int, finished: int) -> int:
    """Seed of the sampler for the trial that follows ``finished`` finished trials."""
    return int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])


def suggest_params(trial: Any) -> dict[str, float]:
    """The original's search space (xmnet.md §7.2 step 4)."""
    return {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log) in SEARCH_SPACE.items()}


def booster_params(params: dict[str, float], num_class: int, nthread: int | None) -> dict[str, Any]:
    p = {"booster": "gblinear", "objective": "multi:softprob", "num_class": num_class, "eval_metric": "mlogloss",
         "verbosity": 0, "seed": 1, **params}
    if nthread is not None:
        p["nthread"] = nthread
    return p


def train_booster(params: dict[str, float], train: FeatureSet, evalset: FeatureSet, *, num_class: int,
                  n_estimators: int, nthread: int | None = None):
    """``xgb.train`` with the evaluation set for early stopping (30 rounds); returns the booster."""
    import xgboost as xgb

    dtrain = xgb.DMatrix(train.x, label=train.y)
    deval = xgb.DMatrix(evalset.x, label=evalset.y)
    return xgb.train(booster_params(params, num_class, nthread), dtrain, num_boost_round=n_estimators,
                     evals=[(dtrain, "train"), (deval, "eval")], early_stopping_rounds=EARLY_STOPPING_ROUNDS,
                     verbose_eval=False)


def _proba(booster: Any, x: np.ndarray) -> np.ndarray:
    import xgboost as xgb

    # gblinear keeps only its final weights: the whole booster is the model (no iteration_range)
    return booster.predict(xgb.DMatrix(x))


def log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    return float(-np.log(p).mean())


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((proba.argmax(1) == y).mean())


def run_study(
    train: FeatureSet | Callable[[int], FeatureSet],
    test: FeatureSet,
    *,
    num_class: int,
    output_dir: str | Path,
    eval_on: str = "val",
    val: FeatureSet | None = None,
    n_trials: int = 150,
    n_estimators: int = 100,
    storage: str | None = None,
    study_name: str = "xmnet_xgboost",
    n_jobs: int = 1,
    seed: int = 1,
    nthread: int | None = None,
    callbacks: Sequence[Callable] = (),
    fingerprint: Fingerprint | None = None,
) -> dict[str, Any]:
    """Run (or resume) the Optuna study, refit the best trial, save the booster and a summary.

    Args:
        train: training features, or a function ``draw -> features`` (called in every trial: the
            original's re-extraction through the augmenting loader, ``--xgb_reextract_train``). ``draw`` is
            the number of trials finished before the trial, so a resumed study sees the augmentations of an
            uninterrupted one; the refit of the best trial gets that trial's draw (its own features).
        test: test features.
        num_class: classes (from the data, not the original's hard-coded 200).
        output_dir: where ``xgboost_best.json`` (XGBoost JSON format), ``optuna_study_summary.json``
            and, by default, the SQLite study ``optuna_study.db`` go.
        eval_on: "val" (``val`` features required) or "test" (the original, optimistic).
        n_trials: total finished trials wanted; trials already finished in the storage count.
        storage: an Optuna RDB URL; None = SQLite file in ``output_dir``.
        n_jobs: Optuna parallel trials in this process (several processes may share ``storage``).
        callbacks: extra Optuna callbacks ``(study, trial)``.
        fingerprint: what the study's trials are made from; recorded in the study (user attribute
            ``fingerprint``) and checked when it already holds finished trials (see :func:`check_study`).

    Returns:
        The summary (also written to ``optuna_study_summary.json``).
    """
    import optuna

    if eval_on not in ("val", "test"):
        raise ValueError(f"--xgb_eval_on must be 'val' or 'test', got '{eval_on}'")
    if eval_on == "val" and val is None:
        raise ValueError("--xgb_eval_on val needs validation features")
    if n_trials < 1:
        raise ValueError(f"--n_trials must be >= 1, got {n_trials}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_storage = storage is None
    storage = storage or sqlite_url(out / "optuna_study.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize",
                                    sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)
    except Exception as exc:  # bad URL, unreachable database: one line naming the flag
        raise _open_error(storage, exc) from None
    complete_state = optuna.trial.TrialState.COMPLETE
    if fingerprint is not None:
        if study.get_trials(deepcopy=False, states=(complete_state,)):
            check(Fingerprint.from_dict(study.user_attrs.get("fingerprint")), fingerprint,
                  what=f"the optuna study '{study_name}' in {storage}",
                  ways="pass --overwrite to delete it and search again, or choose another --output_dir")
        else:
            study.set_user_attr("fingerprint", fingerprint.to_dict())
    if own_storage:  # only this run writes its folder's study: a running trial there was cut short by a kill
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            _logger.warning("optuna trial %d was interrupted by a kill: marked failed (the next trial gets its "
                            "suggestion)", t.number)

    def seed_sampler(study: Any, _trial: Any = None) -> None:
        finished = len(study.get_trials(deepcopy=False, states=(complete_state,)))
        study.sampler = optuna.samplers.TPESampler(seed=trial_seed(seed, finished))

    # parallel trials (n_jobs > 1) would share a seed; their order is not reproducible anyway
    seeding = [seed_sampler] if n_jobs == 1 else []
    get_train = train if callable(train) else (lambda _draw: train)

    def objective(trial: Any) -> float:
        params = suggest_params(trial)
        draw = len(study.get_trials(deepcopy=False, states=(complete_state,)))
        trial.set_user_attr("train_draw", draw)
        tr = get_train(draw)
        evalset = val if eval_on == "val" else test
        booster = train_booster(params, tr, evalset, num_class=num_class, n_estimators=n_estimators, nthread=nthread)
        test_acc = accuracy(_proba(booster, test.x), test.y)
        trial.set_user_attr("test_accuracy", test_acc)
        trial.set_user_attr("best_iteration", int(getattr(booster, "best_iteration", -1)))
        if eval_on == "val":
            value = log_loss(_proba(booster, val.x), val.y)
            trial.set_user_attr("val_accuracy", accuracy(_proba(booster, val.x), val.y))
        else:  # the original: the objective is the training log-loss
            value = log_loss(_proba(booster, tr.x), tr.y)
        return value

    done = [t for t in study.trials if t.state == complete_state]
    remaining = n_trials - len(done)
    if done:
        _logger.info("optuna study '%s' in %s: %d finished trials found, running %d more", study_name, storage,
                     len(done), max(0, remaining))
    if remaining > 0:
        for reseed in seeding:
            reseed(study)
        study.optimize(objective, n_trials=remaining, n_jobs=n_jobs, callbacks=[*seeding, *callbacks],
                       gc_after_trial=False)
    complete = [t for t in study.trials if t.state == complete_state]
    best = study.best_trial
    best_acc = float(best.user_attrs["test_accuracy"])
    overall = max(complete, key=lambda t: t.user_attrs["test_accuracy"])
    # refit the best trial's parameters (deterministic with one thread) and save it in XGBoost's JSON
    refit_train = get_train(int(best.user_attrs.get("train_draw", 0)))
    booster = train_booster(best.params, refit_train, val if eval_on == "val" else test, num_class=num_class,
                            n_estimators=n_estimators, nthread=nthread)
    booster_path = out / "xgboost_best.json"
    tmp = out / ".xgboost_best.tmp.json"
    booster.save_model(str(tmp))
    tmp.replace(booster_path)
    summary = {
        "study_name": study_name,
        "storage": storage,
        "eval_on": eval_on,
        "n_trials": len(complete),
        "num_class": num_class,
        "feature_dim": int(test.x.shape[1]),
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "best_accuracy": best_acc,
        "overall_best": float(overall.user_attrs["test_accuracy"]),
        "overall_best_trial": overall.number,
        "refit_test_accuracy": accuracy(_proba(booster, test.x), test.y),
        "booster": str(booster_path),
        "note": ("overall_best is the maximum test accuracy over trials (selection on the test set: "
                 "optimistic)" + ("; with eval_on=test the test set also drives early stopping"
                                  if eval_on == "test" else "")),
        "trials": [{"number": t.number, "value": t.value, "params": t.params, **t.user_attrs} for t in complete],
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "optuna_study_summary.json")
    _logger.info("XGBoost (%s protocol): best trial %d, best_accuracy %.4f, overall_best %.4f over %d trials",
                 eval_on, best.number, best_acc, summary["overall_best"], len(complete))
    return summary
