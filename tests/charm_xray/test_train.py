"""CHARM-Xray end to end on synthetic ChestX-ray14 (real digit images): the README commands, the grid
with skip and resume, and learning."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common.engine
from charm_xray import pipeline
from common.checkpoint import load_checkpoint
from common.synth import chestxray14 as synth
from tests.charm_xray.helpers import parse_train_args

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model_name", "resnet18", "--image_size", "32", "--batch_size_phase1", "8", "--batch_size_phase2", "8",
        "--batch_size_test", "8", "--amp", "none", "--num_workers", "0", "--no_progress", "--lr_find_iters", "12",
        "--freeze_epochs", "1", "--phase1_epochs", "1", "--phase2_epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cx14") / "data"
    synth.write(root, 80, 2)
    return root


_args = parse_train_args


def _run(cmd, cwd):
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_readme_commands_train_then_three_test_checkpoint_forms(data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(data)
    # `python train.py` from the paper folder's point of view: defaults data/ and working/, notebook split
    res = _run([str(REPO / "charm_xray" / "train.py"), *TINY], work)
    assert res.returncode == 0, res.stderr[-2000:]
    out = work / "working"
    assert "lr_find: " in (out / "runs" / "experiment" / "log.txt").read_text()
    pictures = sorted(p.name for p in (out / "runs" / "experiment").glob("*.png"))
    assert any("attention" in p or "overlay" in p for p in pictures) and any(p.startswith("curves") for p in pictures), pictures
    assert (out / "runs" / "experiment" / "lr_find.png").stat().st_size > 0
    for name in ("models/phase1_experiment.pth", "models/final_experiment.pth",
                 "parameter_search_results/preds_experiment.pt", "runs/experiment/roc_curves.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "training_results.csv").open()))
    assert [r["exp_name"] for r in rows] == ["experiment"] and list(rows[0]) == pipeline.TRAINING_RESULTS_COLUMNS
    metrics = json.loads((out / "runs" / "experiment" / "metrics.json").read_text())
    assert metrics["protocol"]["split"] == "charm_notebook" and "leakage" in metrics["protocol"]["warnings"][0]
    assert len(metrics["best"]["per_class_auc"]) == 14 and metrics["dataset"] == "chestxray14"
    # issue 19: test + validation predictions, the manifest, and the leak counted, not refused
    from common.metrics import macro_auc
    from common.predictions import read_predictions

    run_dir = out / "runs" / "experiment"
    preds = read_predictions(run_dir / "predictions.csv")
    assert list(preds.groups) == ["patient"] and preds.probs.shape == (metrics["protocol"]["test_images"], 14)
    assert macro_auc(preds.probs, preds.targets) == pytest.approx(metrics["best"]["auc"], abs=1e-6)
    assert read_predictions(run_dir / "predictions_val.csv").probs.shape[1] == 14
    assert set(metrics["predictions"]) == {"predictions.csv", "predictions_val.csv"}
    check = metrics["split_check"]
    assert check["ok"] and check["protocol"] == "charm_notebook"
    leak = {(tuple(p["splits"]), p["level"]): p for p in check["pairs"]}
    leaked = json.loads((run_dir / "split_report.json").read_text())["leaked_test_patients"]
    assert leak[(("phase1_train", "test"), "patient")]["shared"] == leaked
    assert leak[(("phase2_train", "test"), "patient")]["shared"] == 0
    res = _run(["-m", "common.splits", "check", str(run_dir)], REPO)
    assert res.returncode == 0, res.stderr
    assert "ALLOWED: charm_notebook protocol" in res.stdout or leaked == 0
    ckpt = "working/models/final_experiment.pth"
    res = _run([str(REPO / "charm_xray" / "test_checkpoint.py"), "--checkpoint", ckpt], work)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Overall ROC-AUC:" in res.stdout and "Mean class ROC-AUC:" in res.stdout and "Time: load" in res.stdout
    assert f"Evaluated {int(0.2 * 80)} images" in res.stdout
    assert (work / "working/models/final_experiment.pth_test/roc_curves.png").stat().st_size > 0
    # the other two README forms, in process
    from charm_xray import evaluate
    from charm_xray.test_checkpoint import get_args_parser as test_parser

    for extra in (["--num_samples", "-1"], ["--batch_size", "64"]):
        targs = test_parser().parse_args(["--checkpoint", str(work / ckpt), "--data_dir", str(data),
                                          "--num_workers", "0", *extra])
        report = evaluate.main(targs)
        assert len(report["per_class_auc"]) == 14 and report["timing"]["images_per_second"] > 0
    # compare warns about the protocol whichever was used
    res = _run(["-m", "common.compare", str(out / "runs" / "experiment"), "--paper", "charm_xray"], REPO)
    assert res.returncode == 0, res.stderr
    assert "leakage" in res.stderr


def test_unknown_checkpoint_and_missing_data_end_in_one_line(data, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    res = _run([str(REPO / "charm_xray" / "test_checkpoint.py"), "--checkpoint", str(tmp_path / "x.png"),
                "--data_dir", str(data)], tmp_path)
    assert res.returncode != 0 and res.stderr.strip().count("\n") == 0 and "error:" in res.stderr
    assert "PNG" in res.stderr
    from charm_xray.train import main as train_main
    from common.cli import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(train_main, _args(["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o"), *TINY]))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "nowhere" in err[-1] and "Traceback" not in "\n".join(err)


class _KillAfter:
    """Stands for a kill -9 right after the n-th checkpoint_last write."""

    def __init__(self, n):
        self.n, self.count, self.real = n, 0, common.engine.save_checkpoint

    def __call__(self, path, state):
        self.real(path, state)
        if Path(path).name == "checkpoint_last.pth":
            self.count += 1
            if self.count == self.n:
                raise KeyboardInterrupt("killed")


def test_grid_names_csvs_heatmaps_skip_and_resume_bit_identical(data, tmp_path, monkeypatch):
    base = ["--data_dir", str(data), *TINY, "--plots", "false", "--lr", "1e-3", "--phase1_epochs", "2", "--freeze_epochs", "0",
            "--momentum_values", "0.99", "--k_values", "2", "3", "--threshold_values", "0.2"]
    ref = _args([*base, "--output_dir", str(tmp_path / "ref")])
    results = pipeline.main(ref)
    assert [r["exp_name"] for r in results] == ["m0.99_k2_t0.2", "m0.99_k3_t0.2"]
    out = tmp_path / "ref"
    grid = list(csv.DictReader((out / "parameter_search_results" / "grid_search_results.csv").open()))
    assert list(grid[0]) == pipeline.GRID_COLUMNS and [g["k"] for g in grid] == ["2", "3"]
    assert all(g["error"] == "" and 0 <= float(g["mean_auc"]) <= 1 for g in grid)
    assert (out / "parameter_search_results" / "heatmap_momentum_0.99.png").stat().st_size > 0
    assert len(list(csv.DictReader((out / "training_results.csv").open()))) == 2

    # a rerun skips both settings and rewrites the CSVs without duplicates
    finished = (out / "runs" / "m0.99_k2_t0.2" / "_FINISHED").stat().st_mtime_ns
    pipeline.main(ref)
    assert (out / "runs" / "m0.99_k2_t0.2" / "_FINISHED").stat().st_mtime_ns == finished
    assert len(list(csv.DictReader((out / "parameter_search_results" / "grid_search_results.csv").open()))) == 2

    # killed in setting 2 during phase 1 (after its first epoch's checkpoint), then resumed
    run = _args([*base, "--output_dir", str(tmp_path / "run")])
    killer = _KillAfter(n=3 + 1)  # setting 1 writes 3 (phase1 2 + phase2 1); setting 2: phase-1 epoch 0
    monkeypatch.setattr(common.engine, "save_checkpoint", killer)
    with pytest.raises(KeyboardInterrupt):
        pipeline.main(run)
    monkeypatch.setattr(common.engine, "save_checkpoint", killer.real)
    assert not (tmp_path / "run" / "runs" / "m0.99_k3_t0.2" / "_FINISHED").exists()
    pipeline.main(run)
    for name in ("final_m0.99_k2_t0.2.pth", "final_m0.99_k3_t0.2.pth"):
        a = load_checkpoint(out / "models" / name)["model"]
        b = load_checkpoint(tmp_path / "run" / "models" / name)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = list(csv.DictReader((tmp_path / "run" / "runs" / "m0.99_k3_t0.2" / "phase1" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]


def test_learns_multilabel_digits(tmp_path):
    root = tmp_path / "d"
    synth.write(root, 400, 1)
    args = _args(["--data_dir", str(root), "--output_dir", str(tmp_path / "o"), "--split", "official",
                  "--model_name", "resnet18", "--image_size", "48", "--batch_size_phase1", "16",
                  "--batch_size_phase2", "16", "--batch_size_test", "32", "--lr", "2e-3", "--freeze_epochs", "0",
                  "--phase1_epochs", "6", "--phase2_epochs", "2", "--phase2_lr_max", "5e-4", "--amp", "none",
                  "--num_workers", "0", "--no_progress", "--plots", "false"])
    result = pipeline.main(args)[0]
    # chance is 0.5; 6 + 2 epochs on about 270 training images reached 0.80 when measured
    assert result["mean_auc"] > 0.7, result


def test_phase1_on_every_image_is_refused_under_the_notebook_split(data, capsys):
    """The notebooks' protocol has a findings-only phase 1: ``--phase1_findings_only false`` there used to
    be ignored silently; it is an error naming the flag, the split and the way on."""
    with pytest.raises(SystemExit) as exit_info:
        _args(["--phase1_findings_only", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --phase1_findings_only false" in err and "charm_notebook" in err and "--split official" in err
    args = _args(["--phase1_findings_only", "false", "--split", "official"])
    assert not args.phase1_findings_only
    from charm_xray.data import load_table, make_split

    table = load_table(data)
    with pytest.raises(ValueError, match="--phase1_findings_only false"):
        make_split(table, "charm_notebook", phase1_findings_only=False)
    every = make_split(table, "official", phase1_findings_only=False)
    assert not every.phase1.train["has_finding"].all() and len(every.phase1.train) == len(every.phase2.train)
