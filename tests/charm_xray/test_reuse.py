"""charm_xray reruns: a setting's folder (finished result, finished stages, lr_find result, a killed stage's
checkpoint) and the grid table are reused only when made with the same flags and inputs (issue 17 §1, §2);
the grid table accumulates rows across invocations."""

import csv
import json
import shutil

import pytest

import charm_xray.engine_charm as engine_charm
import common.engine
from charm_xray import pipeline
from common.fingerprint import FINGERPRINT_FILE, FingerprintMismatch
from common.synth import chestxray14 as synth
from tests.charm_xray.helpers import parse_train_args

FAST = ["--model_name", "resnet18", "--image_size", "32", "--batch_size_phase1", "8", "--batch_size_phase2", "8",
        "--batch_size_test", "8", "--amp", "none", "--num_workers", "0", "--no_progress", "--plots", "false",
        "--lr_find_iters", "6", "--freeze_epochs", "0", "--phase1_epochs", "1", "--phase2_epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cx14reuse") / "data"
    synth.write(root, 64, 3)
    return root


_args = parse_train_args


class _NoWork:
    """Stands for any work: loading the data table or training a fit."""

    def __call__(self, *a, **k):
        raise AssertionError("work was done")


def _forbid_work(monkeypatch):
    monkeypatch.setattr(pipeline, "load_table", _NoWork())
    monkeypatch.setattr(engine_charm, "fit", _NoWork())


def _tree(path):
    return {p.relative_to(path): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


def test_finished_setting_rerun_with_another_flag_is_refused_and_with_the_same_flags_reused(data, tmp_path,
                                                                                             monkeypatch):
    out = tmp_path / "working"
    base = ["--data_dir", str(data), "--output_dir", str(out), *FAST]
    first = pipeline.main(_args(base))[0]
    exp = out / "runs" / "experiment"
    assert json.loads((exp / FINGERPRINT_FILE).read_text())["args"]["model_name"] == "resnet18"
    before = _tree(out / "runs")
    _forbid_work(monkeypatch)
    # the case: another backbone with the default --exp_name
    with pytest.raises(FingerprintMismatch) as info:
        pipeline.main(_args([*base, "--model_name", "resnet50"]))
    message = str(info.value)
    assert "\n" not in message and "--exp_name experiment" in message and str(exp) in message
    assert "--model_name resnet18 -> resnet50" in message
    assert "--overwrite" in message and "another --exp_name or --output_dir" in message
    assert _tree(out / "runs") == before  # stopped before any work
    # the same flags (and flags that do not change the result) reuse it: nothing is trained
    again = pipeline.main(_args([*base, "--plots", "true", "--num_workers", "1", "--keep_stage_checkpoints", "true"]))
    assert again[0]["training_time"] == first["training_time"]
    assert _tree(out / "runs") == before
    # an old folder without a fingerprint is refused the same way
    (exp / FINGERPRINT_FILE).unlink()
    with pytest.raises(FingerprintMismatch, match="has no fingerprint.*--overwrite"):
        pipeline.main(_args(base))


def test_changed_data_list_is_refused_and_overwrite_starts_again(data, tmp_path, monkeypatch):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "working"
    base = ["--data_dir", str(copy), "--output_dir", str(out), *FAST, "--lr", "1e-3", "--phase2_epochs", "0"]
    pipeline.main(_args(base))
    with open(copy / "test_list.txt", "a") as f:  # one more line: another input
        f.write("\n")
    with pytest.raises(FingerprintMismatch, match=r"--data_dir test_list\.txt \(file\) sha256 \w+ -> sha256 \w+"):
        pipeline.main(_args(base))
    # --overwrite discards the old folder and its models, and trains again
    fits = []
    real_fit = engine_charm.fit
    monkeypatch.setattr(engine_charm, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    pipeline.main(_args([*base, "--overwrite"]))
    assert fits == [1]
    assert "overwrite" not in json.loads((out / "runs" / "experiment" / FINGERPRINT_FILE).read_text())["args"]
    pipeline.main(_args(base))  # now made from the changed list: reused
    assert fits == [1]


class _KillAtFirstCheckpoint:
    def __init__(self):
        self.real = common.engine.save_checkpoint

    def __call__(self, path, state):
        self.real(path, state)
        raise KeyboardInterrupt("killed")


def test_killed_setting_lr_find_and_stage_checkpoint_reused_only_with_the_same_flags(data, tmp_path, monkeypatch):
    out = tmp_path / "working"
    base = ["--data_dir", str(data), "--output_dir", str(out), *FAST, "--phase1_epochs", "2", "--phase2_epochs", "0"]
    killer = _KillAtFirstCheckpoint()
    monkeypatch.setattr(common.engine, "save_checkpoint", killer)
    with pytest.raises(KeyboardInterrupt):
        pipeline.main(_args(base))
    monkeypatch.setattr(common.engine, "save_checkpoint", killer.real)
    exp = out / "runs" / "experiment"
    assert (exp / "lr_find.json").is_file() and (exp / "phase1" / "checkpoint_last.pth").is_file()
    _forbid_work(monkeypatch)
    with pytest.raises(FingerprintMismatch, match=r"--lr_find_end 10\.0 -> 5\.0"):
        pipeline.main(_args([*base, "--lr_find_end", "5"]))
    with pytest.raises(FingerprintMismatch, match=r"--weight_decay 0\.01 -> 0\.1"):
        pipeline.main(_args([*base, "--weight_decay", "0.1"]))
    monkeypatch.undo()
    # the same flags: the saved lr_find result and the killed stage's checkpoint are reused
    monkeypatch.setattr(pipeline, "lr_find", _NoWork())
    pipeline.main(_args(base))
    rows = list(csv.DictReader((exp / "phase1" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]


def _grid(data, out, *ks, extra=()):
    return _args(["--data_dir", str(data), "--output_dir", str(out), *FAST, "--lr", "1e-3", "--phase2_epochs", "0",
                  "--momentum_values", "0.99", "--k_values", *ks, "--threshold_values", "0.2", *extra])


def _grid_rows(out):
    return list(csv.DictReader((out / "parameter_search_results" / "grid_search_results.csv").open()))


def test_grid_table_and_heat_map_accumulate_over_invocations(data, tmp_path, monkeypatch):
    out = tmp_path / "working"
    drawn = []
    real_plot = pipeline.plot_heatmap
    monkeypatch.setattr(pipeline, "plot_heatmap",
                        lambda results, m, path: drawn.append(sorted(r["k"] for r in results)) or real_plot(results, m, path))
    pipeline.main(_grid(data, out, "2"))
    # the second invocation: another setting, which fails this time
    real_train = pipeline.train_phases

    def fail_k3(args, plan, exp_name, *rest):
        if exp_name == "m0.99_k3_t0.2":
            raise RuntimeError("boom")
        return real_train(args, plan, exp_name, *rest)

    monkeypatch.setattr(pipeline, "train_phases", fail_k3)
    with pytest.raises(SystemExit):
        pipeline.main(_grid(data, out, "3"))
    rows = _grid_rows(out)
    assert [(r["k"], r["error"]) for r in rows] == [("2", ""), ("3", "RuntimeError: boom")]
    assert all(r["fingerprint"].startswith("sha256:") for r in rows) and rows[0]["fingerprint"] != rows[1]["fingerprint"]
    assert drawn[-1] == [2, 3]  # the heat map is drawn from both invocations' rows
    # re-running the setting replaces its row (the newest wins), the other row stays
    monkeypatch.setattr(pipeline, "train_phases", real_train)
    pipeline.main(_grid(data, out, "3"))
    rows = _grid_rows(out)
    assert [(r["k"], r["error"]) for r in rows] == [("2", ""), ("3", "")]
    assert drawn[-1] == [2, 3]
    # a new setting with another flag would mix two experiments in one table: refused before any work
    _forbid_work(monkeypatch)
    with pytest.raises(FingerprintMismatch) as info:
        pipeline.main(_grid(data, out, "4", extra=["--dropout_rate", "0.5"]))
    assert "grid_search_results.csv" in str(info.value) and "--dropout_rate 0.3 -> 0.5" in str(info.value)
    assert len(_grid_rows(out)) == 2
