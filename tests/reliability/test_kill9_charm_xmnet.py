"""Real ``kill -9`` of the CHARM-Xray and XMNet trainers, then the same command again: the finished run
equals an uninterrupted one with the same seed.

Compared between the two output folders: every checkpoint and tensor file bit for bit (weights, the
CHARM memory bank and its write index, the momentum block, optimizer state), every JSON file and CSV
row (one per epoch / setting / trial) except wall-clock fields, the set of files (nothing stale, no
``*.tmp``), and every checkpoint left on disk loads. Kill points are chosen as in ``test_kill9.py``:
at ``fit``'s checkpoint writes, half-way through an epoch, or at the N-th call of a pipeline function
(a stage boundary, an Optuna trial); see ``killer.py``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from common.checkpoint import load_checkpoint
from tests.reliability.helpers import run_killer, was_killed

# wall-clock values: the only things a resumed run may report differently
TIMING = frozenset({"epoch_time", "training_time"})
# files whose content is a log or a picture (compared by name only)
UNCOMPARED = {".txt", ".png", ".log", ".db"}
# XMNet's file names carry the original's minute timestamp (%H:%M-%d-%m-%Y)
STAMP = re.compile(r"\d\d:\d\d-\d\d-\d\d-\d{4}")


def _normalise(obj: Any, root: Path, ignore: frozenset[str] = frozenset()) -> Any:
    """``obj`` without timing (and ``ignore``) keys, with ``root`` and timestamps in strings replaced."""
    if isinstance(obj, dict):
        return {k: _normalise(v, root, ignore) for k, v in obj.items() if k not in TIMING | ignore}
    if isinstance(obj, list | tuple):
        return [_normalise(v, root, ignore) for v in obj]
    if isinstance(obj, str):
        return STAMP.sub("<stamp>", obj.replace(str(root), "<out>"))
    return obj


def _assert_equal(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_equal(a[k], b[k], f"{where}[{k}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:  # NaN (an undefined per-class AUC)
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _files(root: Path) -> dict[str, Path]:
    """Every file below ``root`` by its relative name, timestamps replaced."""
    return {STAMP.sub("<stamp>", p.relative_to(root).as_posix()): p for p in root.rglob("*") if p.is_file()}


def assert_same_outputs(full: Path, resumed: Path, *, skip: frozenset[str] = frozenset(),
                        ignore: frozenset[str] = frozenset()) -> None:
    """The resumed folder holds the same files as the uninterrupted one (no more, no fewer), with equal
    content: tensors bit for bit, JSON and CSV rows equal apart from timing and ``ignore`` keys; the
    content of the ``skip`` files is not compared."""
    a_files, b_files = _files(full), _files(resumed)
    assert a_files.keys() == b_files.keys(), f"file sets differ: {set(a_files) ^ set(b_files)}"
    assert not [n for n in b_files if n.endswith(".tmp") or ".tmp." in n]
    for name in sorted(set(a_files) - skip):
        a, b = a_files[name], b_files[name]
        if a.suffix in (".pth", ".pt"):
            ca, cb = load_checkpoint(a), load_checkpoint(b)  # also: every checkpoint on disk is loadable
            _assert_equal(_normalise(ca, full, ignore), _normalise(cb, resumed, ignore), name)
        elif a.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            _assert_equal(_normalise(ja, full, ignore), _normalise(jb, resumed, ignore), name)
        elif a.suffix == ".csv":
            _assert_equal(_normalise(_csv_rows(a), full, ignore), _normalise(_csv_rows(b), resumed, ignore), name)
        elif a.suffix not in UNCOMPARED and a.name != "_FINISHED":
            assert a.read_bytes() == b.read_bytes(), name


def test_output_comparison_sees_a_changed_tensor_a_duplicated_row_and_a_stale_temp_file(tmp_path):
    def folder(name: str, weight: float, rows: int, epoch_time: float) -> Path:
        d = tmp_path / name
        (d / "runs").mkdir(parents=True)
        torch.save({"model": {"w": torch.tensor([1.0, weight])}, "epoch": 1}, d / "runs" / "checkpoint_best.pth")
        (d / "log.csv").write_text("epoch,loss,epoch_time\n" + "".join(f"{e},0.5,{epoch_time}\n" for e in range(rows)))
        (d / "metrics.json").write_text(json.dumps({"best": {"loss": 0.5}, "dir": str(d), "training_time": epoch_time}))
        return d

    ref = folder("ref", 2.0, 2, 1.0)
    assert_same_outputs(ref, folder("same", 2.0, 2, 7.0))  # other wall-clock values and folder only
    with pytest.raises(AssertionError, match="checkpoint_best.pth"):
        assert_same_outputs(ref, folder("weights", 2.0001, 2, 1.0))
    with pytest.raises(AssertionError, match="log.csv"):
        assert_same_outputs(ref, folder("rows", 2.0, 3, 1.0))
    stale = folder("stale", 2.0, 2, 1.0)
    (stale / "runs" / ".checkpoint_last.pth.abcd1234.tmp").write_bytes(b"partial")
    with pytest.raises(AssertionError, match="file sets differ"):
        assert_same_outputs(ref, stale)


def _kill_then_rerun(point: str, epoch: int, module: str, argv: list[str], **env: str) -> None:
    """Run ``module argv`` killed at ``point``, then the same command again to its end."""
    proc = run_killer(point, epoch, module, argv, **env)
    assert was_killed(proc), f"not killed at {point} (rc {proc.returncode}): {proc.stderr[-3000:]}"
    proc = run_killer("none", 0, module, argv)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------- CHARM-Xray

CHARM = "charm_xray.train"
CHARM_TINY = ["--model_name", "resnet18", "--image_size", "32", "--batch_size_phase1", "8", "--batch_size_phase2",
              "8", "--batch_size_test", "8", "--amp", "none", "--num_workers", "0", "--no_progress", "--plots",
              "false", "--device", "cpu", "--bank_size", "16"]
# lr_find (12 batches), fine_tune(1 frozen + 2 epochs), phase 2 one-cycle (1 epoch); stage checkpoints kept
# so that they are compared too
CHARM_SINGLE = [*CHARM_TINY, "--lr_find_iters", "12", "--freeze_epochs", "1", "--phase1_epochs", "2",
                "--phase2_epochs", "1", "--keep_stage_checkpoints", "true"]
# two grid settings, no lr_find, default clean-up of the stage checkpoints
CHARM_GRID = [*CHARM_TINY, "--lr", "1e-3", "--freeze_epochs", "0", "--phase1_epochs", "2", "--phase2_epochs", "1",
              "--momentum_values", "0.99", "--k_values", "2", "3", "--threshold_values", "0.2"]
EXP = "runs/experiment"
SECOND = "runs/m0.99_k3_t0.2"


@pytest.fixture(scope="module")
def cx14(tmp_path_factory) -> Path:
    from common.synth import chestxray14

    root = tmp_path_factory.mktemp("cx14") / "data"
    chestxray14.write(root, 80, 2)
    return root


def _charm_argv(data: Path, out: Path, base: list[str]) -> list[str]:
    return ["--data_dir", str(data), "--output_dir", str(out), *base]


@pytest.fixture(scope="module")
def charm_single_full(tmp_path_factory, cx14) -> Path:
    out = tmp_path_factory.mktemp("charm_single") / "full"
    proc = run_killer("none", 0, CHARM, _charm_argv(cx14, out, CHARM_SINGLE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_checkpoint(out / "models" / "final_experiment.pth")["model"]
    # the CHARM state the comparison must cover: the bank was written, the momentum block exists
    assert model["memory_bank.memory"].abs().sum() > 0 and int(model["memory_bank.index"]) > 0
    assert any(k.startswith("momentum_final_block.") for k in model)
    return out


@pytest.fixture(scope="module")
def charm_grid_full(tmp_path_factory, cx14) -> Path:
    out = tmp_path_factory.mktemp("charm_grid") / "full"
    proc = run_killer("none", 0, CHARM, _charm_argv(cx14, out, CHARM_GRID))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


CHARM_SINGLE_POINTS = {
    # lr_find's 6th batch (lr_find.json not written yet: the rerun repeats the range test)
    "inside_lr_find": ("call:charm_xray.engine_charm:CharmTask.forward:6", 0, {}),
    # between checkpoint_last and checkpoint_best of a one-epoch stage: its last checkpoint ends the fit
    "phase1_freeze_before_best": ("before_best", 0, {"KILL_FILES": "phase1_freeze/checkpoint_last.pth,"
                                                                   "phase1_freeze/checkpoint_best.pth"}),
    "between_freeze_and_phase1": ("call:charm_xray.engine_charm:fit:2", 0, {}),
    "phase1_after_first_checkpoint": ("after_last", 0, {"KILL_FILES": "phase1/checkpoint_last.pth"}),
    "phase1_mid_epoch": ("mid_epoch", 1, {"KILL_DIR": f"{EXP}/phase1"}),
    "phase1_during_last_write": ("during_last", 1, {"KILL_FILES": "phase1/checkpoint_last.pth"}),
    "between_phase1_and_phase2": ("call:charm_xray.engine_charm:fit:3", 0, {}),
    # after the test predictions were saved, before metrics.json / result.json / _FINISHED
    "after_test_before_results": ("call:charm_xray.pipeline:plot_roc_curves:1", 0, {}),
}


def _charm_kill_then_rerun(points: dict, name: str, tmp_path: Path, data: Path, base: list[str]) -> Path:
    """Kill charm_xray/train.py at ``points[name]``, rerun the same command; returns its output folder."""
    point, epoch, env = points[name]
    out = tmp_path / "run"
    _kill_then_rerun(point, epoch, CHARM, _charm_argv(data, out, base), **env)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHARM_SINGLE_POINTS))
def test_charm_kill9_then_rerun_equals_uninterrupted(tmp_path, cx14, charm_single_full, name):
    out = _charm_kill_then_rerun(CHARM_SINGLE_POINTS, name, tmp_path, cx14, CHARM_SINGLE)
    assert_same_outputs(charm_single_full, out)
    for stage, epochs in (("phase1_freeze", 1), ("phase1", 2), ("phase2", 1)):
        assert [r["epoch"] for r in _csv_rows(out / EXP / stage / "log.csv")] == [str(e) for e in range(epochs)]
    assert len(_csv_rows(out / "training_results.csv")) == 1


CHARM_GRID_POINTS = {
    "second_setting_phase1_mid_epoch": ("mid_epoch", 1, {"KILL_DIR": f"{SECOND}/phase1"}),
    # the second setting's last stage, between its checkpoint_last and checkpoint_best
    "second_setting_phase2_before_best": ("before_best", 0, {"KILL_FILES": "m0.99_k3_t0.2/phase2/checkpoint_last.pth,"
                                                                           "m0.99_k3_t0.2/phase2/checkpoint_best.pth"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHARM_GRID_POINTS))
def test_charm_grid_kill9_in_second_setting_then_rerun_equals_uninterrupted(tmp_path, cx14, charm_grid_full, name):
    out = _charm_kill_then_rerun(CHARM_GRID_POINTS, name, tmp_path, cx14, CHARM_GRID)
    assert_same_outputs(charm_grid_full, out)
    grid = _csv_rows(out / "parameter_search_results" / "grid_search_results.csv")
    assert [r["exp_name"] for r in grid] == ["m0.99_k2_t0.2", "m0.99_k3_t0.2"]
    assert len(_csv_rows(out / "training_results.csv")) == 2


# ---------------------------------------------------------------- XMNet

XMNET = "xmnet.Train"
XM_TINY = ["--backbone_class", "resnet18", "--crop_size", "64", "--seg_size", "64", "--device", "cpu",
           "--num_workers", "0", "--batch_size", "10", "--num_classes", "3", "--max_epoch", "3", "--resume", "auto"]
# backbone training (3 epochs), then the XGBoost + Optuna stage (6 trials, one XGBoost thread: deterministic)
XM_CLS = ["--xmnet", "--cls_included", *XM_TINY, "--n_trials", "6", "--xgb_n_estimators", "10", "--xgb_nthread", "1"]
XM_SEG = ["--seg_included", "--unet", *XM_TINY, "--save_masks", "2"]
# Optuna numbers every trial: after a trial killed mid-way (kept as FAIL) the later numbers are one higher
TRIAL_NUMBERS = {"number", "best_trial", "overall_best_trial"}


@pytest.fixture(scope="module")
def leafvein(tmp_path_factory) -> Path:
    from common.synth.xmnet import write

    root = tmp_path_factory.mktemp("leafvein")
    write(root / "soybean_2_1", 45, seed=0, num_classes=3)  # 30 train / 15 test images, 3 batches an epoch
    return root


def _xm_argv(data: Path, out: Path, base: list[str]) -> list[str]:
    return ["--data_dir", str(data), "--output_dir", str(out), *base]


def _xm_full(tmp_path_factory, data: Path, base: list[str], name: str) -> Path:
    out = tmp_path_factory.mktemp(name) / "full"
    proc = run_killer("none", 0, XMNET, _xm_argv(data, out, base))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def xm_cls_full(tmp_path_factory, leafvein) -> Path:
    return _xm_full(tmp_path_factory, leafvein, XM_CLS, "xm_cls")


@pytest.fixture(scope="module")
def xm_seg_full(tmp_path_factory, leafvein) -> Path:
    return _xm_full(tmp_path_factory, leafvein, XM_SEG, "xm_seg")


def _assert_one_result_line(full: Path, resumed: Path) -> None:
    lines = [(d / "results" / "resnet18" / "all_results_file.txt").read_text().splitlines() for d in (full, resumed)]
    assert len(lines[1]) == 1 and STAMP.sub("<stamp>", lines[0][0]) == STAMP.sub("<stamp>", lines[1][0])


def _xm_kill_then_rerun(points: dict, name: str, full: Path, tmp_path: Path, leafvein: Path, flags: list[str]) -> Path:
    """Kill xmnet/Train.py at ``points[name]`` ("best" = the uninterrupted run's best epoch), rerun it."""
    point, epoch, env = points[name]
    if epoch == "best":
        epoch = json.loads((full / "metrics.json").read_text())["best_epoch"]
    out = tmp_path / "run"
    _kill_then_rerun(point, epoch, XMNET, _xm_argv(leafvein, out, flags), **env)
    return out


XM_CLS_POINTS = {
    "mid_epoch": ("mid_epoch", 1, {}),
    "after_checkpoint_last": ("after_last", 1, {}),
    "before_best": ("before_best", "best", {}),
    "during_last_write_of_final_epoch": ("during_last", 2, {}),
    "before_the_study": ("call:xmnet.engine_xmnet:extract_features:1", 0, {}),
    # the third trial's booster: two trials finished, the third is left RUNNING in the SQLite study
    "inside_the_third_trial": ("call:xmnet.xgb_stage:train_booster:3", 0, {}),
    # every trial finished, the best one is being refit
    "refit_of_the_best_trial": ("call:xmnet.xgb_stage:train_booster:7", 0, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(XM_CLS_POINTS))
def test_xmnet_classification_kill9_then_rerun_equals_uninterrupted(tmp_path, leafvein, xm_cls_full, name):
    import optuna

    out = _xm_kill_then_rerun(XM_CLS_POINTS, name, xm_cls_full, tmp_path, leafvein, XM_CLS)
    killed_trial = name == "inside_the_third_trial"
    assert_same_outputs(xm_cls_full, out, skip=frozenset({"optuna_study.db"}),
                        ignore=TRIAL_NUMBERS if killed_trial else frozenset())
    _assert_one_result_line(xm_cls_full, out)
    assert [r["epoch"] for r in _csv_rows(out / "log.csv")] == ["0", "1", "2"]
    study = optuna.load_study(study_name="xmnet_xgboost_XMNet_Classification",
                              storage=f"sqlite:///{out / 'optuna_study.db'}")
    states = [t.state.name for t in study.trials]
    assert states == (["COMPLETE"] * 2 + ["FAIL"] + ["COMPLETE"] * 4 if killed_trial else ["COMPLETE"] * 6)
    if killed_trial:  # the trial numbers: the reference's, one higher from the killed trial on
        ref = json.loads((xm_cls_full / "optuna_study_summary.json").read_text())
        got = json.loads((out / "optuna_study_summary.json").read_text())
        assert [t["number"] for t in got["trials"]] == [n + (n >= 2) for n in (t["number"] for t in ref["trials"])]
        assert got["best_trial"] == ref["best_trial"] + (ref["best_trial"] >= 2)


XM_SEG_POINTS = {
    "mid_epoch": ("mid_epoch", 1, {}),
    "before_best": ("before_best", "best", {}),
    "during_last_write_of_final_epoch": ("during_last", 2, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(XM_SEG_POINTS))
def test_xmnet_unet_segmentation_kill9_then_rerun_equals_uninterrupted(tmp_path, leafvein, xm_seg_full, name):
    out = _xm_kill_then_rerun(XM_SEG_POINTS, name, xm_seg_full, tmp_path, leafvein, XM_SEG)
    assert_same_outputs(xm_seg_full, out)
    _assert_one_result_line(xm_seg_full, out)
    assert [r["epoch"] for r in _csv_rows(out / "log.csv")] == ["0", "1", "2"]


# ---------------------------------------------------------------- the Optuna study alone (CI)

def test_xgb_study_kill9_inside_a_trial_then_resume_equals_uninterrupted(tmp_path):
    """XMNet's XGBoost + Optuna stage on digit features: killed inside its third trial, then resumed in
    this process; the same trials (parameters, values, accuracies) in the same order and the same best
    booster as a study that was never interrupted."""
    from tests.xmnet.test_xgb import digits_features
    from xmnet.xgb_stage import run_study

    train, val, test = digits_features()
    kwargs = {"val": val, "num_class": 10, "n_trials": 5, "n_estimators": 5, "nthread": 1}
    ref = run_study(train, test, output_dir=tmp_path / "full", **kwargs)
    out = tmp_path / "run"
    proc = run_killer("call:xmnet.xgb_stage:train_booster:3", 0, "tests.reliability.xgb_study_run", [str(out), "5"])
    assert was_killed(proc), proc.stderr[-3000:]
    got = run_study(train, test, output_dir=out, **kwargs)
    strip = TRIAL_NUMBERS | {"storage", "booster"}
    assert _normalise(got, out, strip) == _normalise(ref, tmp_path / "full", strip)
    assert [t["number"] for t in got["trials"]] == [0, 1, 3, 4, 5]  # trial 2 was killed (FAIL)
    assert (out / "xgboost_best.json").read_bytes() == (tmp_path / "full" / "xgboost_best.json").read_bytes()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
