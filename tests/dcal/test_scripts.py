"""End-to-end: the seed's train commands and the eval scripts on tiny synthetic layouts (CPU)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from common.predictions import read_predictions
from dcal.scripts import eval_fgvc, eval_reid, train_fgvc, train_reid
from dcal.utils.config import ConfigError
from tests.dcal.conftest import FGVC_CONFIG, REID_CONFIG, REPO, tiny_opts


def _parse(module, argv):
    return argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)


def test_train_fgvc_resume_and_eval(cub_root, tmp_path):
    out = tmp_path / "fgvc"
    opts = tiny_opts(cub_root, 4, out, epochs=1)
    res = train_fgvc.main(_parse(train_fgvc, ["--config", str(FGVC_CONFIG), "--opts", *opts]))
    assert res["monitor"] == "acc1" and res["epochs_run"] == 1
    for name in ("metrics.json", "checkpoint_last.pth", "checkpoint_best.pth", "log.csv", "training_history.json", "args.json"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "checkpoint_last.pth", weights_only=True)
    log_vars = ckpt["task"]["uncertainty.log_vars"]
    assert log_vars.shape == (3,) and torch.all(log_vars != 0)  # optimised, unlike the replication
    # resume the same run to 2 epochs
    opts2 = tiny_opts(cub_root, 4, out, epochs=2)
    res2 = train_fgvc.main(_parse(train_fgvc, ["--config", str(FGVC_CONFIG), "--resume", "auto", "--opts", *opts2]))
    assert res2["epochs_run"] == 2
    hist = json.loads((out / "training_history.json").read_text())
    assert set(hist) >= {"train_loss", "val_loss", "train_acc", "val_acc", "learning_rate"}
    assert len(hist["train_loss"]) == 2
    ev = tmp_path / "eval"
    metrics = eval_fgvc.main(_parse(eval_fgvc, ["--config", str(FGVC_CONFIG), "--checkpoint", str(out / "checkpoint_best.pth"),
                                                "--visualize", "--output_dir", str(ev), "--opts", *opts]))
    saved = json.loads((ev / "fgvc_results.json").read_text())
    assert saved["acc1"] == pytest.approx(metrics["acc1"]) and len(saved["per_class_acc"]) == 4
    assert {"acc5", "mean_class_acc", "std_class_acc", "min_class_acc", "max_class_acc"} <= set(saved)
    assert (ev / "metrics.json").is_file()
    # issue 19: training and evaluation both save their predictions and split manifest
    for folder in (out, ev):
        preds = read_predictions(folder / "predictions.csv")
        assert preds.probs.shape[1] == 4 and not preds.multilabel
        assert json.loads((folder / "metrics.json").read_text())["split_check"]["ok"]
    assert (preds.probs.argmax(1) == preds.targets).mean() == pytest.approx(metrics["acc1"], abs=1e-6)
    pngs = sorted(p.name for p in (ev / "visualizations").glob("*.png"))
    assert len(pngs) == 32 and any(p.endswith("_rollout.png") for p in pngs) and any(p.endswith("_glca.png") for p in pngs)


def test_train_and_eval_reid(veri_root, tmp_path):
    out = tmp_path / "reid"
    opts = tiny_opts(veri_root, 4, out, epochs=1, batch=8)
    res = train_reid.main(_parse(train_reid, ["--config", str(REID_CONFIG), "--opts", *opts]))
    assert res["monitor"] == "mAP" and 0.0 <= res["best"]["mAP"] <= 1.0
    assert (out / "checkpoint_best.pth").is_file()  # re-ID also keeps a best checkpoint
    ev = tmp_path / "eval"
    metrics = eval_reid.main(_parse(eval_reid, ["--config", str(REID_CONFIG), "--checkpoint", str(out / "checkpoint_best.pth"),
                                                "--distance_metric", "cosine", "--output_dir", str(ev), "--opts", *opts]))
    saved = json.loads((ev / "reid_results.json").read_text())
    assert saved["distance_metric"] == "cosine" and saved["num_query"] == 4 and saved["num_gallery"] == 24
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10", "rank20", "rank50", "num_query_ids", "num_gallery_ids"):
        assert key in saved
    assert saved["mAP"] == pytest.approx(metrics["mAP"])
    # issue 19: the distance matrix with query / gallery ids and cameras, and the identity-level check
    from common.metrics import evaluate_rank

    preds = read_predictions(ev / "predictions.csv")
    assert preds.distmat.shape == (4, 24) and len(preds.g_camids) == 24
    again = evaluate_rank(preds.distmat, preds.q_pids, preds.g_pids, preds.q_camids, preds.g_camids)
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-5)
    check = json.loads((ev / "metrics.json").read_text())["split_check"]
    pairs = {(tuple(p["splits"]), p["level"]): p for p in check["pairs"]}
    assert pairs[(("query", "gallery"), "identity")]["status"] == "allowed"
    assert pairs[(("train", "query"), "identity")]["shared"] == 0 and check["ok"]
    assert (out / "distmat.npy").is_file()


def test_script_errors(cub_root, veri_root, tmp_path):
    with pytest.raises(ConfigError, match="task_type is 'fgvc' but this script trains 'reid'"):
        train_reid.main(_parse(train_reid, ["--config", str(FGVC_CONFIG), "--opts", *tiny_opts(cub_root, 4, tmp_path)]))
    with pytest.raises(ConfigError, match=r"model.num_classes is 7 but .* has 4 training classes \(set --opts model.num_classes=4\)"):
        train_fgvc.main(_parse(train_fgvc, ["--config", str(FGVC_CONFIG), "--opts", *tiny_opts(cub_root, 7, tmp_path)]))
    with pytest.raises(ConfigError, match="data.batch_size 1 is too small for PWCA"):
        train_fgvc.main(_parse(train_fgvc, ["--config", str(FGVC_CONFIG), "--opts",
                                            *tiny_opts(cub_root, 4, tmp_path, batch=1)]))
    with pytest.raises(ConfigError, match="--checkpoint: weights file not found: .*nope.pth"):
        eval_fgvc.main(_parse(eval_fgvc, ["--config", str(FGVC_CONFIG), "--checkpoint", str(tmp_path / "nope.pth"),
                                          "--output_dir", str(tmp_path / "e"), "--opts", *tiny_opts(cub_root, 4, tmp_path)]))
    from dcal.training.trainer import build_model
    from dcal.utils.config import load_config

    big = load_config(FGVC_CONFIG, [*tiny_opts(cub_root, 4, tmp_path), "model.img_size=64", "data.image_size=[64,64]"])
    torch.save({"model": build_model(big).state_dict()}, tmp_path / "w64.pth")
    with pytest.raises(ValueError, match=r"--checkpoint .*w64.pth: .*1 tensors differ in shape.*backbone.pos_embed"):
        eval_fgvc.main(_parse(eval_fgvc, ["--config", str(FGVC_CONFIG), "--checkpoint", str(tmp_path / "w64.pth"),
                                          "--output_dir", str(tmp_path / "e"), "--opts", *tiny_opts(cub_root, 4, tmp_path)]))
    with pytest.raises(ValueError, match="--checkpoint .*54 missing.*1 unexpected"):
        torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "w.pth")
        eval_reid.main(_parse(eval_reid, ["--config", str(REID_CONFIG), "--checkpoint", str(tmp_path / "w.pth"),
                                          "--output_dir", str(tmp_path / "e"), "--opts", *tiny_opts(veri_root, 4, tmp_path)]))


@pytest.mark.parametrize(("cwd", "script", "flags"), [
    (".", "dcal/scripts/train_fgvc.py", ["--config", "--gpu", "--resume", "--opts", "default: 0"]),
    ("dcal", "scripts/train_reid.py", ["--config", "--gpu", "--resume", "--opts"]),
    ("dcal", "scripts/eval_fgvc.py", ["--checkpoint", "--visualize", "--output_dir", "./eval_results"]),
    (".", "dcal/scripts/eval_reid.py", ["--distance_metric", "{euclidean,cosine}", "default: euclidean"]),
])
def test_help_runs_from_root_and_paper_folder(cwd, script, flags):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, script, "--help"], cwd=REPO / cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    help_text = " ".join(res.stdout.split())
    for flag in flags:
        assert flag in help_text
