"""Train.py options beyond the README commands: --select_on val, the original XGBoost protocol with
re-extraction, mask guidance, --pretrained_weights from a local file, resume, --help."""

import json

import pytest
import torch
import torchvision

from common.checkpoint import CheckpointError
from common.predictions import read_predictions, read_split_manifest
from tests.xmnet.helpers import tiny
from xmnet import Train
from xmnet.backboneModels import XMNetModel, load_pretrained


def test_select_on_val_original_xgb_protocol_and_mask_guidance(xm_root, tmp_path):
    out = tmp_path / "run"
    argv = ["--mmanet", "--cls_included", "--maskguided", *tiny(xm_root, out), "--select_on", "val",
            "--val_fraction", "0.2", "--xgb_eval_on", "test", "--xgb_reextract_train", "--max_epoch", "2"]
    Train.main(Train.parse_args(argv))
    m = json.loads((out / "metrics.json").read_text())
    assert m["monitor"] == "acc1" and m["monitor_mode"] == "max" and m["eval_split"].startswith("val")
    assert m["xgboost"]["eval_on"] == "test" and "optimistic" in m["xgboost"]["note"]
    # issue 19: validation predictions (fit) and test predictions (the selected checkpoint), the manifest
    val, test = read_predictions(out / "predictions_val.csv"), read_predictions(out / "predictions.csv")
    assert not val.multilabel and val.probs.sum(1) == pytest.approx(1.0, abs=1e-6)
    assert (test.probs.argmax(1) == test.targets).mean() == pytest.approx(m["best"]["acc1"], abs=1e-6)
    assert set(m["split_manifest"]["sha256"]) == {"train", "val", "test"} and m["split_check"]["ok"]
    assert read_split_manifest(out)["splits"]["val"]["num_samples"] == len(val.ids) and not set(val.ids) & set(test.ids)
    rows = (out / "log.csv").read_text().splitlines()
    assert "train_mse" in rows[0].split(",")  # the mask-guidance loss is trained and logged
    assert "MMANet_mask_guided_Classification" in str(next((out / "checkpoint").glob("*.pth")))
    study = json.loads((out / "optuna_study_summary.json").read_text())
    best = min(study["trials"], key=lambda t: t["value"])
    assert study["best_accuracy"] == best["test_accuracy"]


def test_resume_of_finished_run_keeps_epochs_and_study(xm_root, tmp_path):
    out = tmp_path / "run"
    argv = ["--xmnet", "--cls_included", *tiny(xm_root, out)]
    Train.main(Train.parse_args(argv))
    first = json.loads((out / "optuna_study_summary.json").read_text())
    summary = Train.main(Train.parse_args([*argv, "--resume", "auto", "--n_trials", "3"]))
    assert summary["epochs_run"] == 1
    second = json.loads((out / "optuna_study_summary.json").read_text())
    assert second["n_trials"] == 3
    kept = {t["number"]: t["params"] for t in second["trials"]}
    assert all(kept[t["number"]] == t["params"] for t in first["trials"])


def test_pretrained_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = XMNetModel("resnet18", 5)
    assert load_pretrained(model.features.features, "resnet18", path) == len(model.features.features.state_dict())
    # the original's Sequential(*children[:-2]): layer4 is child 7
    assert torch.equal(model.features.features[7][1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(model.features.features[1].running_var, ref.bn1.running_var)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match="not resnet18 ImageNet weights"):
        load_pretrained(model.features.features, "resnet18", path)
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_pretrained(model.features.features, "resnet18", tmp_path / "none.pth")


def test_pretrained_densenet_old_key_names(tmp_path):
    ref = torchvision.models.densenet161(weights=None)
    old = {k.replace("denselayer1.norm1.", "denselayer1.norm.1.").replace("denselayer1.conv2.", "denselayer1.conv.2."): v
           for k, v in ref.state_dict().items()}  # the published file's key style
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet161.pth")
    model = XMNetModel("densenet161", 5)
    load_pretrained(model.features.features, "densenet161", tmp_path / "densenet161.pth")
    assert torch.equal(model.features.features.denseblock1.denselayer1.conv2.weight,
                       ref.features.denseblock1.denselayer1.conv2.weight)


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        Train.parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--xmnet", "--mmanet", "--manet", "--cls_included", "--cls_ild", "--seg_included", "--seg_ild",
                 "--freeze_all", "--dataparallel", "--maskguided", "--unet", "--fsds", "--att_from", "--transfer_to",
                 "--backbone_class", "--dataset", "--data_dir", "--seg_size", "--num_classes", "--lr", "--max_epoch",
                 "--model_path", "--amp", "--local_train", "--batch_size", "--device", "--seed", "--resume",
                 "--output_dir", "--pretrained_weights", "--n_trials", "--optuna_storage", "--optuna_n_jobs"):
        assert flag in text
