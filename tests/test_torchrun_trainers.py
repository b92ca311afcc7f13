"""Every paper trainer runs under torchrun (2 processes, gloo on CPU) and writes its metrics.json."""

import json
import subprocess
from pathlib import Path

import pytest

from common.synth import generate
from tests.torchrun import ROOT, torchrun_command, torchrun_env


def _torchrun(args, cwd, tmp_path):
    r = subprocess.run(torchrun_command(*args), cwd=cwd, env=torchrun_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.dist
def test_dvxray_main_finetune_under_torchrun(tmp_path):
    data = tmp_path / "dvxray"
    generate("dvxray", data, n=48, seed=0)
    out = tmp_path / "run"
    _torchrun([ROOT / "dvxray/main_finetune.py", "--model", "convnextv2_atto", "--output_dir", out,
               "--train_list", "annotations/DvXray_train.txt", "--val_list", "annotations/DvXray_val.txt",
               "--classes_file", "annotations/classes.txt", "--input_size", "32", "--batch_size", "4",
               "--epochs", "1", "--num_workers", "0", "--device", "cpu", "--head_type", "fpn_pan",
               "--attention_config", '{"N3":"coordatt_u"}', "--base_loss", "mcb_convex"], data, tmp_path)
    m = _metrics(out)
    assert m["epochs_run"] == 1 and 0.0 <= m["best"]["mAP_ema"] <= 1.0
    # predictions.csv gathered from both ranks: each validation pair once, in the list's order (the
    # distributed sampler pads and interleaves), and its mAP is the reported one
    from common.metrics import mean_average_precision
    from common.predictions import read_predictions

    preds = read_predictions(out / "predictions.csv")
    listed = [line.split()[0].lstrip("./") for line in (data / "annotations/DvXray_val.txt").read_text().splitlines()]
    assert [i.lstrip("./") for i in preds.ids] == listed
    assert mean_average_precision(preds.probs, preds.targets)[0] == pytest.approx(m["best"]["mAP_ema"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.dist
def test_cxrlt_stage2_under_torchrun(tmp_path):
    data = tmp_path / "padchest"
    generate("padchest", data, n=48, seed=0)
    out = tmp_path / "run"
    _torchrun(["cxrlt/train_stage2.py", "--data_dir", data, "--model", "convnextv2_atto", "--pretrained", "false",
               "--pretrained_checkpoint", "none", "--image_size", "32", "--num_workers", "0", "--device", "cpu",
               "--batch_size", "4", "--val_batch_size", "4", "--warmup_head_epochs", "1", "--finetune_epochs", "1",
               "--output_dir", out], ROOT, tmp_path)
    assert 0.0 <= _metrics(out)["final"]["mAP"] <= 1.0


@pytest.mark.slow
@pytest.mark.dist
def test_dcal_train_reid_under_torchrun(tmp_path):
    data = tmp_path / "veri"
    generate("veri776", data, n=48, seed=0)
    out = tmp_path / "run"
    _torchrun(["dcal/scripts/train_reid.py", "--config", "dcal/configs/reid/veri776.yaml", "--opts", "device=cpu",
               "model.patch_size=8", "model.num_sa_blocks=2", "model.num_pwca_blocks=2", "data.num_workers=0",
               "training.num_epochs=1", "training.warmup_epochs=0", f"data.data_root={data}",
               "model.num_classes=4", "model.img_size=[32,32]", "data.image_size=[32,32]", "data.batch_size=8",
               f"save_dir={out}"], ROOT, tmp_path)
    m = _metrics(out)
    assert m["dataset"] == "veri776" and m["best"]["num_valid_queries"] > 0


@pytest.mark.slow
@pytest.mark.dist
def test_charm_xray_train_under_torchrun(tmp_path):
    data = tmp_path / "data"
    generate("chestxray14", data, n=80, seed=0)
    out = tmp_path / "working"
    _torchrun([ROOT / "charm_xray/train.py", "--data_dir", data, "--output_dir", out, "--model_name", "resnet18",
               "--image_size", "32", "--batch_size_phase1", "4", "--batch_size_phase2", "4", "--batch_size_test", "4",
               "--lr_find_iters", "12", "--freeze_epochs", "1", "--phase1_epochs", "1", "--phase2_epochs", "1",
               "--amp", "none", "--num_workers", "0", "--device", "cpu", "--no_progress"], tmp_path, tmp_path)
    m = _metrics(out / "runs" / "experiment")
    assert m["protocol"]["split"] == "charm_notebook" and len(m["best"]["per_class_auc"]) == 14
    assert (out / "models" / "final_experiment.pth").is_file()


@pytest.mark.slow
@pytest.mark.dist
def test_xmnet_train_classification_and_xgboost_under_torchrun(tmp_path):
    data = tmp_path / "data"
    generate("xmnet", data / "soybean_2_1", n=45, seed=0)
    out = tmp_path / "run"
    _torchrun([ROOT / "xmnet/Train.py", "--xmnet", "--cls_included", "--data_dir", data, "--dataset", "soybean_2_1",
               "--num_classes", "5", "--backbone_class", "resnet18", "--crop_size", "64", "--seg_size", "64",
               "--batch_size", "4", "--max_epoch", "1", "--num_workers", "0", "--device", "cpu",
               "--n_trials", "2", "--xgb_n_estimators", "10", "--xgb_nthread", "1", "--output_dir", out],
              tmp_path, tmp_path)
    m = _metrics(out)
    assert m["epochs_run"] == 1 and 0.0 <= m["best"]["acc1"] <= 1.0
    assert m["xgboost"]["n_trials"] == 2 and 0.0 <= m["best"]["xgb_best_accuracy"] <= 1.0
    assert (out / "optuna_study_summary.json").is_file() and (out / "best_model.pth").is_file()
