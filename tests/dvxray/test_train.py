"""End-to-end runs of main_finetune.py / eval_only.py on the synthetic set: outputs, resume, learning."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.synth.dvxray import write
from dvxray import eval_only, main_finetune
from tests.dvxray.helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]


def _parse(argv):
    parser = main_finetune.argparse.ArgumentParser(parents=[main_finetune.get_args_parser()])
    args = parser.parse_args(argv)
    main_finetune.check_args(parser, args)
    return args


def test_paper_setting_runs_and_writes_original_outputs(dvxray_data, tmp_path):
    out = tmp_path / "run"
    summary = main_finetune.main(_parse(tiny_args(dvxray_data, out, "--patience", "25", "--warmup_epochs", "5",
                                                  "--drop_path", "0.2", "--dual_view", "true")))
    for name in ("training_log.csv", "checkpoint_last.pth", "checkpoint_best.pth", "metrics.json",
                 "per_class_ap_best.csv", "experiments_summary_test_2.csv", "args.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    assert list(rows[0]) == list(main_finetune.CSV_COLUMNS)
    assert len(rows) == 2
    vals = [float(r["val_metric"]) for r in rows]
    assert vals == sorted(vals, reverse=True)  # re-sorted by val mAP (quirk 13)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["monitor"] == "mAP_ema"  # teacher mode on by default: selection on the EMA
    assert len(metrics["best"]["per_class_ap_ema"]) == 15
    assert summary["epochs_run"] == 2
    # issue 19: the best epoch's predictions and the split manifest, both named in metrics.json
    from common.metrics import mean_average_precision
    from common.predictions import read_predictions, read_split_manifest

    preds = read_predictions(out / "predictions.csv")
    assert metrics["predictions"]["predictions.csv"]["epoch"] == metrics["best_epoch"]
    assert preds.probs.shape == (len(preds.ids), 15) and preds.class_names[0] == "Gun"
    assert mean_average_precision(preds.probs, preds.targets)[0] == pytest.approx(metrics["best"]["mAP_ema"], abs=1e-5)
    manifest = read_split_manifest(out)
    assert manifest["splits"]["val"]["num_samples"] == len(preds.ids)
    assert metrics["split_manifest"]["sha256"]["val"] == manifest["splits"]["val"]["sha256"]
    assert metrics["split_check"]["ok"] is True
    ckpt = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert ckpt["task"]["_extra_state"]["signal"]["values"]["w_mcb"].shape == (15,)
    assert "_extra_state" not in ckpt["model"]  # the model's keys are exactly the original's
    # EMA copy keeps CoordAtt-U's BN buffers at their initial values (quirk 4)
    assert torch.equal(ckpt["ema"]["module.fpn_pan.attn3.base.bn1.running_var"], torch.ones(8))

    # eval_only reproduces the selected (EMA) validation metrics from the best checkpoint
    ev = eval_only.main(eval_only.argparse.ArgumentParser(parents=[eval_only.get_args_parser()]).parse_args(
        ["--checkpoint", str(out / "checkpoint_best.pth"), "--device", "cpu", "--num_workers", "0",
         "--batch_size", "8"]))
    assert ev["mAP"] == pytest.approx(metrics["best"]["mAP_ema"], abs=1e-6)
    row = list(csv.DictReader(open(out / "eval_DvXray_val.csv")))[0]
    assert float(row["mAP"]) == pytest.approx(ev["mAP"], abs=1e-4) and "AP_Pressure_vessel" in row
    # ... and leaves a run folder: predictions.csv that reproduces its mAP, the split manifest and check
    from common.metrics import mean_average_precision
    from common.predictions import read_predictions, read_split_manifest

    ev_dir = out / "eval_DvXray_val"
    summary = json.loads((ev_dir / "metrics.json").read_text())
    assert summary["final"]["mAP"] == pytest.approx(ev["mAP"], abs=1e-12)
    n_val = len((dvxray_data / "annotations" / "DvXray_val.txt").read_text().split("\n")) - 1
    assert summary["predictions"]["predictions.csv"]["rows"] == n_val
    pred = read_predictions(ev_dir / "predictions.csv")
    assert mean_average_precision(pred.probs, pred.targets)[0] == pytest.approx(ev["mAP"], abs=1e-9)
    manifest = read_split_manifest(ev_dir / "split_manifest.json")
    assert set(manifest["splits"]) == {"train", "eval"} and summary["split_check"]["ok"]


def test_resume_equals_uninterrupted_training(dvxray_data, tmp_path):
    extra = ("--teacher_mode", "true", "--ema_decay", "0.9", "--aug_mode", "conditional_2")
    full = tmp_path / "full"
    main_finetune.main(_parse(tiny_args(dvxray_data, full, *extra)))
    part = tmp_path / "part"
    main_finetune.main(_parse(tiny_args(dvxray_data, part, *extra, "--epochs", "1")))
    main_finetune.main(_parse(tiny_args(dvxray_data, part, *extra, "--resume", str(part))))
    a = torch.load(full / "checkpoint_last.pth", weights_only=True)
    b = torch.load(part / "checkpoint_last.pth", weights_only=True)
    for key in ("model", "ema", "task"):
        for k, v in a[key].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, b[key][k]), f"{key}.{k}"
    assert torch.equal(a["task"]["_extra_state"]["signal"]["values"]["w_mcb"],
                       b["task"]["_extra_state"]["signal"]["values"]["w_mcb"])
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((part / "metrics.json").read_text())
    assert ma["final"] == mb["final"]


def test_cli_help_lists_flags_and_refuses_distillation():
    text = main_finetune.get_args_parser().format_help()
    for flag in ("--finetune", "--model_mount", "--fuse_mode", "--ahcr_mode", "--attention_config", "--teacher_mode",
                 "--resume_epoch", "--base_loss", "--mcb_wmin", "--ge_trainable", "--aug_mode", "--rand_aug_m",
                 "--use_scheduler", "--apply_drop_path", "--ema_buffers"):
        assert flag in text
    args = _parse(["--dual_view", "n", "--teacher_mode", "0", "--ge_ema", "Yes"])
    assert args.dual_view is False and args.teacher_mode is False and args.ge_ema is True
    assert args.model == "convnextv2_base" and args.lr == 1e-3 and args.input_size == 384 and args.seed == 42
    with pytest.raises(SystemExit):
        _parse(["--use_distillation", "true"])
    with pytest.raises(SystemExit):
        _parse(["--teacher_mode", "maybe"])


@pytest.mark.slow
def test_small_model_learns_dual_view_task(tmp_path):
    data = tmp_path / "data"
    write(data, 400, seed=2)
    ann = data / "annotations"
    held_out = ann / "held_out.txt"
    held_out.write_text((ann / "DvXray_val.txt").read_text() + (ann / "DvXray_test.txt").read_text())
    out = tmp_path / "run"
    argv = tiny_args(data, out, "--val_list", str(held_out), "--epochs", "6", "--batch_size", "16", "--lr", "2e-3",
                     "--base_loss", "bce", "--teacher_mode", "false", "--aug_mode", "none", "--fpn_out_channels", "64")
    summary = main_finetune.main(_parse(argv))
    targets = np.array([[int(v) for v in line.split()[2].split(",")] for line in held_out.read_text().splitlines()])
    chance = targets.mean(0).mean()  # expected AP of a random ranking = class prevalence
    print("learning check: best mAP", summary["best"]["mAP"], "chance", chance)
    assert summary["best"]["mAP"] > max(3 * chance, chance + 0.2), (summary["best"]["mAP"], chance)


@pytest.mark.slow
def test_entry_scripts_run_from_root_and_from_folder(dvxray_data, tmp_path):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = tiny_args(dvxray_data, tmp_path / "a", "--epochs", "1", "--teacher_mode", "false")
    for cwd, script in ((ROOT, "dvxray/main_finetune.py"), (ROOT / "dvxray", "main_finetune.py")):
        r = subprocess.run([sys.executable, script, *argv], cwd=cwd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    bad = [a if a != str(dvxray_data / "annotations/DvXray_train.txt") else str(tmp_path / "none.txt") for a in argv]
    r = subprocess.run([sys.executable, "dvxray/main_finetune.py", *bad], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "list file not found" in r.stderr.strip().splitlines()[-1]
    # a missing image with DataLoader workers: one line naming the image and its list line, before training
    broken = tmp_path / "broken.txt"
    lines = (dvxray_data / "annotations/DvXray_train.txt").read_text().splitlines()
    broken.write_text("\n".join(lines[:5] + [lines[5].replace("_OL.png", "_XX.png", 1)]) + "\n")
    bad = [a if a != str(dvxray_data / "annotations/DvXray_train.txt") else str(broken) for a in argv]
    bad[bad.index("--num_workers") + 1] = "2"
    r = subprocess.run([sys.executable, "dvxray/main_finetune.py", *bad], cwd=ROOT, env=env, capture_output=True, text=True)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert "image not found" in errors[0] and "_XX.png (listed at" in errors[0] and "broken.txt:6" in errors[0]


def test_resume_epoch_and_fresh_optimizer_override(dvxray_data, tmp_path):
    out = tmp_path / "run"
    main_finetune.main(_parse(tiny_args(dvxray_data, out, "--epochs", "1", "--teacher_mode", "false")))
    steps_first_run = _adam_steps(out / "checkpoint_last.pth")
    summary = main_finetune.main(_parse(tiny_args(dvxray_data, out, "--epochs", "3", "--teacher_mode", "false",
                                                  "--resume", str(out / "checkpoint_last.pth"), "--resume_epoch", "2",
                                                  "--resume_optimizer", "false")))
    assert summary["epochs_run"] == 3
    epochs = sorted(int(r["epoch"]) for r in csv.DictReader(open(out / "training_log.csv")))
    assert epochs == [0, 2]  # epoch 1 skipped by --resume_epoch 2
    # a fresh optimizer counted only the resumed epoch's steps (a restored one would hold twice as many)
    assert _adam_steps(out / "checkpoint_last.pth") == steps_first_run


def _adam_steps(path):
    state = torch.load(path, weights_only=True)["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


def test_patience_stops_when_val_map_stops_improving(dvxray_data, tmp_path):
    # lr 0 and no attention (no BatchNorm): the model never changes, so val mAP never improves after epoch 0
    out = tmp_path / "run"
    args = tiny_args(dvxray_data, out, "--epochs", "3", "--patience", "1", "--lr", "0", "--teacher_mode", "false",
                     "--attention_config", "{}", "--weight_decay", "0")
    summary = main_finetune.main(_parse(args))
    assert summary["stopped_early"] and summary["epochs_run"] == 2
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    assert len(rows) == 2 and rows[0]["val_metric"] == rows[1]["val_metric"]
    # --patience 0 (default) disables early stopping
    summary = main_finetune.main(_parse(tiny_args(dvxray_data, tmp_path / "run0", "--epochs", "3", "--lr", "0",
                                                  "--teacher_mode", "false", "--attention_config", "{}")))
    assert not summary["stopped_early"] and summary["epochs_run"] == 3


def test_eval_only_accepts_a_checkpoint_of_the_original_code(dvxray_data, tmp_path):
    from dvxray.engine_finetune import build_model_from_args

    new_flags = ("data_root", "batch_views", "ema_buffers", "use_scheduler", "apply_drop_path", "amp",
                 "sort_training_log", "summary_csv")
    args = vars(_parse(tiny_args(dvxray_data, tmp_path / "unused")))
    orig_args = {k: v for k, v in args.items() if k not in new_flags}
    orig_args["val_list"] = str(dvxray_data / "annotations/DvXray_val.txt")
    model, _ = build_model_from_args(args)
    sd = model.state_dict()
    # the original's keys (checked name by name in test_models.py), its empty Linear(320, 0) included
    assert sd["backbone.head.weight"].shape == (0, 320) and "fpn_pan.attn3.base.conv1.weight" in sd
    ema = {k: v.clone() for k, v in model.named_parameters()}  # SimpleEMA: parameters only
    path = tmp_path / "original.pth"
    torch.save({"model": sd, "model_ema": ema, "args": orig_args, "epoch": 3}, path)

    def run(*extra):
        parser = eval_only.argparse.ArgumentParser(parents=[eval_only.get_args_parser()])
        return eval_only.main(parser.parse_args(["--checkpoint", str(path), "--device", "cpu", "--num_workers", "0",
                                                 "--data_root", str(dvxray_data), *extra]))

    from_ema, from_model = run(), run("--use_ema", "false")
    assert len(from_ema["per_class_ap"]) == 15 and from_ema["mAP"] == from_model["mAP"]
    torch.save({"model": {**sd, "extra.weight": torch.zeros(1)}, "args": orig_args}, path)
    with pytest.raises(eval_only.CheckpointError, match=r"unexpected \['extra.weight'\]"):
        run()


def test_finetune_from_an_original_checkpoint_loads_every_key(dvxray_data, tmp_path):
    from dvxray.engine_finetune import build_model_from_args, load_finetune_weights

    args = _parse(tiny_args(dvxray_data, tmp_path / "unused"))
    source, _ = build_model_from_args(args)
    path = tmp_path / "original.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)  # the original's key list (test_models.py)
    target, _ = build_model_from_args(args)
    counts = load_finetune_weights(target, path, report_dir=tmp_path / "run")
    assert counts == {"loaded": len(source.state_dict()), "shape_skipped": 0, "missing": 0, "unexpected": 0}
    assert torch.equal(target.classifier.weight, source.classifier.weight)
    assert torch.equal(target.fpn_pan.attn3.base.conv1.weight, source.fpn_pan.attn3.base.conv1.weight)
