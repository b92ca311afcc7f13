"""End-to-end: both README commands on synthetic data (CPU, tiny), outputs in the original layout and
metrics.json in the common schema, segmentation learning, and the three drivers over runlib."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.predictions import read_predictions
from common.synth.xmnet import write
from tests.xmnet.helpers import TINY
from xmnet import Train, engine_xmnet
from xmnet.backboneModels import XMNetModel
from xmnet.leafvein2 import LeafVeinDataset
from xmnet.utils import iou_dice

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_segmentation_iou_improves_with_training(tmp_path):
    torch.manual_seed(0)
    write(tmp_path, 45, seed=0, num_classes=3)
    train = LeafVeinDataset(tmp_path, "train", train=True, crop=64)
    test = LeafVeinDataset(tmp_path, "test", train=False, crop=64)
    model = XMNetModel("resnet18", 3, attention="xmnet", segmentation=True, unet=True, att_from=5)
    task = engine_xmnet.XMNetTask(model, cls_included=False, seg_included=True, maskguided=False, fsds=False, seg_size=64,
                           seg_target_mode="binary", freeze_features_bn=False)
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x = torch.stack([test[i][0] for i in range(len(test))])
    m = torch.stack([test[i][2] for i in range(len(test))])

    def test_iou() -> float:
        model.eval()
        with torch.no_grad():
            iou, _ = iou_dice(model(x)["seg"][0], m)
        model.train()
        return iou.mean().item()

    before = test_iou()
    loader = torch.utils.data.DataLoader(train, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(6):
        for batch in loader:
            loss = task(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = test_iou()
    assert before < 0.1 and after > 0.5, (before, after)


def test_readme_step1_classification_and_xgboost(xm_root, tmp_path, monkeypatch):
    """README step 1 as written (+ tiny settings), from a working directory holding ./data."""
    shutil.copytree(xm_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    argv = ["--xmnet", "--cls_included", "--backbone_class", "resnet18", "--dataset", "soybean_2_1",
            *TINY, "--max_epoch", "2", "--n_trials", "3"]
    summary = Train.main(Train.parse_args(argv))
    out = tmp_path / "output/resnet18/XMNet_Classification"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert metrics["monitor"] == "sel_train_ce" and metrics["monitor_mode"] == "min" and metrics["epochs_run"] == 2
    assert {"acc1", "xgb_best_accuracy", "xgb_overall_best"} <= set(metrics["best"])
    assert 0.0 <= metrics["best"]["acc1"] <= 1.0 and metrics["xgboost"]["n_trials"] == 3
    assert metrics["xgboost"]["eval_on"] == "test"  # the original protocol is the default
    # the selected epoch is the one with the lowest training CE (the original's rule)
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()]
    col = rows[0].index("val_sel_train_ce")
    ces = [float(r[col]) for r in rows[1:]]
    assert metrics["best_epoch"] == ces.index(min(ces))
    ckpts = list((out / "checkpoint").glob("XMNet_Classification_*.pth"))
    assert len(ckpts) == 1
    ck = load_checkpoint(ckpts[0])
    # the original's four entries, plus the flags and preprocessing predict.py rebuilds the model from
    assert set(ck) == {"net", "test_iou", "Test_acc", "epoch", "args", "preprocessing"}
    assert ck["Test_acc"] == metrics["best"]["acc1"] and ck["preprocessing"]["paper"] == "xmnet"
    assert not any(k.startswith("module.") for k in ck["net"])
    acc_files = list((out / "results/resnet18/XMNet_Classification").glob("*/model_accuracies.txt"))
    assert len(acc_files) == 1 and "Best_test_acc_BOT" in acc_files[0].read_text()
    assert "XMNet_Classification" in (out / "results/resnet18/all_results_file.txt").read_text()
    assert (out / "xgboost_best.json").is_file() and (out / "optuna_study.db").is_file()
    assert (out / "best_model.pth").is_file()


def test_readme_step2_segmentation_from_inside_xmnet(xm_root, tmp_path):
    """README step 2 (the version with --transfer_to) run as `python Train.py` inside xmnet/, starting from
    a classification checkpoint; --dataparallel is a no-op on CPU."""
    base = tmp_path / "base.pth"
    m = XMNetModel("resnet18", 200, attention="xmnet")
    torch.save({"net": m.state_dict(), "Test_acc": 0.0, "test_iou": None, "epoch": 0}, base)
    out = tmp_path / "seg"
    cmd = [sys.executable, "-u", "Train.py", "--xmnet", "--seg_ild", "--freeze_all", "--dataparallel", "--data_dir",
           str(xm_root), "--backbone_class", "resnet18", "--model_path", str(base), "--unet", "--transfer_to", "0.5",
           "--output_dir", str(out), *TINY, "--att_from", "5", "--fsds", "--save_masks", "2"]
    r = subprocess.run(cmd, cwd=ROOT / "xmnet", env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no DataParallel wrapping" in r.stderr and "training on 10 of 30 images" not in r.stderr
    assert "training on 15 of 30 images" in r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["monitor"] == "sel_train_iou" and {"iou", "dice"} <= set(metrics["best"])
    assert "acc1" not in metrics["best"] and "xgboost" not in metrics
    preds = read_predictions(out / "predictions.csv")  # issue 19: per-image IoU / Dice beside the scores
    assert preds.extras["iou"].mean() == pytest.approx(metrics["best"]["iou"], abs=1e-6)
    assert len(list((out / "predicted_masks").glob("*.png"))) == 2
    ckpts = list((out / "checkpoint").glob("XMNet_Segmentation_Unet-Segmentation-*.pth"))
    assert len(ckpts) == 1
    net = load_checkpoint(ckpts[0])["net"]
    assert torch.equal(net["classifier.weight"], m.classifier.weight)  # frozen: unchanged


def _driver(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "xmnet" / name), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True)


def test_drivers_case_numbers_and_dry_run(tmp_path):
    r = _driver("train_model_cls.sh", tmp_path, "2", "resnet50", "true", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "1 of 6 experiments selected" in r.stdout
    assert "--xmnet --cls_included --maskguided" in r.stdout and "--backbone_class resnet50" in r.stdout
    assert "--data_dir" not in r.stdout  # HEAD defines DATA_DIR but does not pass it
    r = _driver("train_model_cls.sh", tmp_path, "3", "densenet161", "false", "--dry-run", "DATA_DIR=/d")
    assert "--data_dir /d --cls_included --output_dir" in r.stdout
    r = _driver("train_model_cls.sh", tmp_path, "7")
    assert r.returncode == 1 and "provide a number between 1 and 6" in r.stderr
    for driver, total in (("train_model_cls.sh", 6), ("train_model_seg.sh", 12), ("train_model_seg_unet3plus.sh", 12)):
        r = _driver(driver, tmp_path)  # no case number: the original's error, nothing runs
        assert r.returncode == 1 and f"between 1 and {total}" in r.stderr and not (tmp_path / "output").exists()
    r = _driver("train_model_seg.sh", tmp_path, "--run-specific", "1-12", "--dry-run")
    assert "12 of 12 experiments selected" in r.stdout
    assert r.stdout.count("--xmnet --seg_ild --freeze_all --dataparallel --unet") == 12
    assert r.stdout.count("--fsds") == 6 and "--att_from 6 --fsds" in r.stdout
    r = _driver("train_model_seg_unet3plus.sh", tmp_path, "5", "--dry-run")
    assert "--max_epoch 200" in r.stdout and "--unet" not in r.stdout and "--att_from 3 --output_dir" in r.stdout
    # the original comments out the --fsds cases of the UNet3+ driver
    r = _driver("train_model_seg_unet3plus.sh", tmp_path, "4", "--dry-run")
    assert r.returncode == 1 and "commented out in the original" in r.stderr
    r = _driver("train_model_seg_unet3plus.sh", tmp_path, "--run-specific", "1-12", "--dry-run")
    assert "6 of 12 experiments selected" in r.stdout and "--fsds" not in r.stdout
    r = _driver("train_model_seg_unet3plus.sh", tmp_path, "4", "--dry-run", "FSDS=1")
    assert r.returncode == 0 and "--att_from 2 --fsds" in r.stdout
    r = _driver("train_model_seg.sh", tmp_path, "1", "resnet18", "true")
    assert r.returncode == 1 and "not found: ./output/resnet18/cls_1_xmnet/best_model.pth" in r.stderr


def _dry_run_args(driver: str, cwd: Path, *args: str):
    r = _driver(driver, cwd, *args, "--dry-run")
    assert r.returncode == 0, r.stderr
    cmd = next(line.split("cmd: ", 1)[1] for line in r.stdout.splitlines() if "cmd: " in line)
    argv = shlex.split(cmd)
    return Train.parse_args(argv[argv.index(str(ROOT / "xmnet" / "Train.py")) + 1:])


@pytest.mark.parametrize("seg_driver, case", [("train_model_seg.sh", "6"), ("train_model_seg_unet3plus.sh", "1")])
def test_readme_driver_pair_flags_and_keys_fit(tmp_path, seg_driver, case):
    """README: train_model_cls.sh 1 ... true, then train_model_seg.sh 6 ... true: the segmentation driver
    reads case 1's best_model.pth by default, and that checkpoint loads strictly into its model."""
    cls = _dry_run_args("train_model_cls.sh", tmp_path, "1", "resnet18", "true")
    seg = _dry_run_args(seg_driver, tmp_path, case, "resnet18", "true")
    assert Path(seg.model_path) == Path(cls.output_dir) / "best_model.pth"
    assert engine_xmnet.attention_of(cls) == engine_xmnet.attention_of(seg) == "xmnet"

    def build(a):
        return XMNetModel(a.backbone_class, a.num_classes, attention=engine_xmnet.attention_of(a),
                          segmentation=a.seg_included, unet=a.unet, att_from=a.att_from, fsds=a.fsds, seg_arch=a.seg_arch)

    torch.manual_seed(0)
    trained = build(cls)
    torch.save({"net": trained.state_dict(), "test_iou": None, "Test_acc": 0.5, "epoch": 0}, tmp_path / "best.pth")
    model = build(seg)
    engine_xmnet.load_model_path(model, str(tmp_path / "best.pth"))
    assert torch.equal(model.attention.weight, trained.attention.weight)


@pytest.mark.slow
def test_readme_driver_pair_runs_as_written(tmp_path):
    """The README's pair on synthetic data (python -m common.synth xmnet), tiny settings, resnet18."""
    r = subprocess.run([sys.executable, "-m", "common.synth", "xmnet", str(tmp_path / "data/soybean_2_1"), "--n", "30"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    extra = "EXTRA_ARGS=" + " ".join([*TINY, "--max_epoch", "1", "--plots", "false", "--save_masks", "1"])
    r = _driver("train_model_cls.sh", tmp_path, "1", "resnet18", "true", extra)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run = tmp_path / "output/resnet18/cls_1_xmnet"
    assert (run / "_FINISHED").is_file() and (run / "best_model.pth").is_file()
    r = _driver("train_model_seg.sh", tmp_path, "6", "resnet18", "true", extra)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    seg = tmp_path / "output/resnet18/seg_unet_att_from3_fsds"
    assert (seg / "_FINISHED").is_file() and (seg / "metrics.json").is_file()
    assert "--model_path ./output/resnet18/cls_1_xmnet/best_model.pth: loaded" in (seg / "train.log").read_text()
    r = _driver("train_model_seg_unet3plus.sh", tmp_path, "9", "resnet18", "true", extra)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (tmp_path / "output/resnet18/seg_unet3plus_att_from5/metrics.json").is_file()
    r = _driver("train_model_cls.sh", tmp_path, "1", "resnet18", "true", extra)
    assert r.returncode == 0 and "skipped" in r.stdout


def test_default_segmentation_target_is_the_raw_mask():
    """xmnet.md §4.2/§6.3: the BCE target is the raw mask (bilinearly resized to the output), not mask > 0."""
    args = Train.parse_args(["--xmnet", "--seg_ild", "--freeze_all", "--unet"])
    torch.manual_seed(0)
    model = XMNetModel("resnet18", 3, attention="xmnet", segmentation=True, unet=True).eval()
    task = engine_xmnet.XMNetTask(model, cls_included=False, seg_included=True, maskguided=False, fsds=False,
                                  seg_size=64, seg_target_mode=args.seg_target, freeze_features_bn=False)
    img = torch.randn(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.7).float() * 255
    got = task((img, torch.tensor([0, 1]), mask))["seg_loss"]
    with torch.no_grad():
        logits = model(img)["seg"][0]
    target = torch.nn.functional.interpolate(mask, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert target.max() == 255  # raw values reach the loss
