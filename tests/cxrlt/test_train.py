"""End-to-end: both stages, both inference CLIs and the export on synthetic data (tiny, CPU)."""

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from common.predictions import read_predictions, read_split_manifest
from common.synth import mimic as synth_mimic
from common.synth import padchest as synth_padchest
from cxrlt import export_safetensors, inference, predict, train_stage1, train_stage2
from cxrlt.model import CLASS_NAMES

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import PREVALENCE, write_longtail_padchest  # noqa: E402

TINY = ["--model", "convnextv2_atto", "--pretrained", "false", "--image_size", "32", "--num_workers", "0",
        "--device", "cpu", "--amp", "bf16"]


def _parse(module, argv):
    return argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    synth_mimic.write(root, n=40, seed=0)
    out = root / "out"
    args = _parse(train_stage1, ["--data_dir", str(root), *TINY, "--batch_size", "8", "--warmup_head_epochs", "1",
                                 "--finetune_epochs", "1", "--output_dir", str(out), "--uncertain_policy", "ignore",
                                 "--val_splits", "validate", "test"])
    return out, train_stage1.main(args)


def test_stage1_writes_metrics_and_checkpoints(stage1_run):
    out, summary = stage1_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    for key in ("mAP", "auc", "f1_macro", "per_class_ap", "per_class_auc", "per_class_f1", "mAP_ema"):
        assert key in metrics["final"], key
    assert len(metrics["final"]["per_class_ap"]) == 14
    assert (out / "warmup_checkpoint_last.pth").is_file() and (out / "checkpoint_last.pth").is_file()
    assert (out / "log_warmup.csv").is_file() and "global_epoch" in (out / "log.csv").read_text().splitlines()[0]
    # issue 19: phase 2's reported predictions with study / patient ids, and the split manifest
    preds = read_predictions(out / "predictions.csv")
    assert set(preds.groups) == {"study", "patient"} and preds.probs.shape[1] == 14
    manifest = read_split_manifest(out)
    assert manifest["splits"]["val"]["num_samples"] == len(preds.ids)
    assert {p["level"] for p in metrics["split_check"]["pairs"]} == {"image", "study", "patient"}
    assert metrics["split_check"]["ok"] and metrics["predictions"]["predictions.csv"]["rows"] == len(preds.ids)


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory, stage1_run):
    s1_out, _ = stage1_run
    root = tmp_path_factory.mktemp("padchest")
    synth_padchest.write(root, n=48, seed=0)
    out = root / "out"
    args = _parse(train_stage2, ["--data_dir", str(root), *TINY, "--batch_size", "8", "--val_batch_size", "16",
                                 "--warmup_head_epochs", "1", "--finetune_epochs", "1", "--output_dir", str(out),
                                 "--pretrained_checkpoint", str(s1_out / "checkpoint_last.pth")])
    return root, out, train_stage2.main(args)


def test_stage2_from_stage1_writes_metrics(stage2_run):
    root, out, summary = stage2_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["monitor"] == "mAP_ema" and metrics["class_names"] == list(CLASS_NAMES)
    assert len(metrics["final"]["per_class_ap"]) == 30 and "auc_ema" in metrics["final"]
    args = json.loads((out / "args.json").read_text())
    assert args["loss"] == "db" and args["sampler"] == "cas" and args["ema_decay"] == 0.9999
    preds = read_predictions(out / "predictions.csv")
    assert list(preds.groups) == ["patient"] and preds.class_names == list(CLASS_NAMES)
    patient_pair = [p for p in metrics["split_check"]["pairs"] if p["level"] == "patient"]
    assert patient_pair and patient_pair[0]["shared"] == 0  # GroupShuffleSplit by PatientID
    assert (out / "split_manifest.json").is_file() and "split_manifest" in metrics


def test_stage2_resume_auto_is_noop_when_finished(stage2_run):
    root, out, summary = stage2_run
    args = _parse(train_stage2, ["--data_dir", str(root), *TINY, "--batch_size", "8", "--val_batch_size", "16",
                                 "--warmup_head_epochs", "1", "--finetune_epochs", "1", "--output_dir", str(out),
                                 "--pretrained_checkpoint", "none", "--resume", "auto"])
    again = train_stage2.main(args)
    assert again["final"]["mAP_ema"] == pytest.approx(summary["final"]["mAP_ema"])


def test_export_inference_and_predict(stage2_run, tmp_path, capsys):
    root, out, _ = stage2_run
    weights = export_safetensors.main(_parse(export_safetensors, ["--checkpoint", str(out / "checkpoint_last.pth"),
                                                                  "--output", str(tmp_path / "w.safetensors")]))
    images = sorted(p.name for p in (root / "images").iterdir() if "corrupt" not in p.name)[:3]
    (tmp_path / "test.csv").write_text("ImageID\n" + "\n".join(images) + "\n")
    common = ["--test_csv", str(tmp_path / "test.csv"), "--image_dir", str(root / "images"), "--image_size", "32",
              "--num_workers", "0", "--model", "convnextv2_atto", "--device", "cpu"]
    res = inference.main(_parse(inference, ["--checkpoints", str(out / "checkpoint_last.pth"), str(weights),
                                            "--output", str(tmp_path / "sub.csv"), "--use_tta", *common]))
    assert list(res.columns) == ["ImageID", *CLASS_NAMES] and len(res) == 3
    single = inference.main(_parse(inference, ["--checkpoints", str(weights), "--output", str(tmp_path / "s.csv"),
                                               "--postprocess", "none", *common]))
    vals = single[list(CLASS_NAMES)].to_numpy()
    assert ((vals >= 1e-6) & (vals <= 1 - 1e-6)).all()
    capsys.readouterr()
    probs = predict.main(_parse(predict, [str(root / "images" / images[0]), "--weights", str(weights), "--model",
                                          "convnextv2_atto", "--image_size", "32", "--device", "cpu"]))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    top = sorted(probs[str(root / "images" / images[0])].items(), key=lambda kv: -kv[1])[:5]
    assert lines == [f"{p:.3f} {c}" for c, p in top]


def test_missing_stage1_checkpoint_names_flag(tmp_path):
    synth_padchest.write(tmp_path, n=12, seed=0)
    args = _parse(train_stage2, ["--data_dir", str(tmp_path), *TINY, "--output_dir", str(tmp_path / "o"),
                                 "--pretrained_checkpoint", str(tmp_path / "nope.pth")])
    with pytest.raises(FileNotFoundError, match="--pretrained_checkpoint: file not found: .*nope.pth"):
        train_stage2.main(args)


def test_help_lists_original_constants():
    text = train_stage2.get_args_parser().format_help()
    for flag in ("--warmup_head_epochs", "--finetune_epochs", "--backbone_lr", "--head_lr", "--max_grad_norm",
                 "--ema_decay", "--cas_threshold", "--db_beta", "--rebalance_alpha", "--loss", "--sampler"):
        assert flag in text
    args = _parse(train_stage2, ["--data_dir", "x"])
    assert (args.warmup_head_epochs, args.finetune_epochs, args.backbone_lr, args.head_lr, args.batch_size) == (
        10, 60, 1.5e-5, 1.5e-4, 64)


@pytest.mark.slow
def test_learns_long_tailed_multilabel_from_digits(tmp_path):
    write_longtail_padchest(tmp_path, 480)
    args = _parse(train_stage2, ["--data_dir", str(tmp_path), "--model", "convnextv2_atto", "--pretrained", "false",
                                 "--pretrained_checkpoint", "none", "--image_size", "32", "--batch_size", "32",
                                 "--val_batch_size", "64", "--num_workers", "0", "--warmup_head_epochs", "0",
                                 "--finetune_epochs", "6", "--backbone_lr", "2e-3", "--head_lr", "2e-3",
                                 "--lr_warmup_epochs", "1", "--ema_decay", "0.9", "--device", "cpu", "--amp", "none",
                                 "--output_dir", str(tmp_path / "out"), "--val_split", "0.25", "--drop_path", "0"])
    torch.manual_seed(0)
    metrics = train_stage2.main(args)
    chance = sum(PREVALENCE) / len(PREVALENCE)  # expected AP of a random ranking
    assert metrics["final"]["mAP"] > chance + 0.15, metrics["final"]["mAP"]
    assert metrics["final"]["auc"] > 0.7


def test_inference_missing_image_names_it(stage2_run, tmp_path):
    root, out, _ = stage2_run
    (tmp_path / "test.csv").write_text("ImageID\nnope.png\n")
    args = _parse(inference, ["--checkpoints", str(out / "checkpoint_last.pth"), "--test_csv", str(tmp_path / "test.csv"),
                              "--image_dir", str(root / "images"), "--output", str(tmp_path / "s.csv"),
                              "--num_workers", "2", "--model", "convnextv2_atto", "--device", "cpu"])
    with pytest.raises(ValueError, match=r"--image_dir .*1 image\(s\) listed in .*test.csv not found, first .*nope.png"):
        inference.main(args)
    image = next(p.name for p in sorted((root / "images").iterdir()) if "corrupt" not in p.name)
    (tmp_path / "ok.csv").write_text(f"ImageID\n{image}\n")
    bad = _parse(inference, ["--checkpoints", str(out / "checkpoint_last.pth"), "--test_csv", str(tmp_path / "ok.csv"),
                             "--image_dir", str(root / "images"), "--output", str(tmp_path / "s.csv"), "--num_workers", "0",
                             "--device", "cpu"])
    with pytest.raises(ValueError, match=r"checkpoint_last.pth \(--model convnextv2_base\): weights do not fit"):
        inference.main(bad)
