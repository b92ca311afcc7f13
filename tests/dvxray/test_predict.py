"""dvxray/predict.py and the dvxray export (issue 18): OL/SD pairs by the DvXray naming, the
preprocessing recorded by main_finetune.py, corrupt image, refusal, resume, explain, ONNX/TorchScript."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.data.images import load_image
from common.data.transforms import build_eval_transform
from common.predict import paper_of_checkpoint
from common.preprocessing import decode_image, to_input
from dvxray import main_finetune, predict
from dvxray.adapter import ADAPTER
from tests.dvxray.helpers import tiny_args
from tests.predict_helpers import (
    check_explain,
    check_export_parity,
    check_predict_cli,
    check_refused_without_preprocessing,
    corrupt_copy,
)


@pytest.fixture(scope="module")
def dv_run(dvxray_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dv_predict") / "run"
    args = argparse.ArgumentParser(parents=[main_finetune.get_args_parser()]).parse_args(
        tiny_args(dvxray_data, out, "--epochs", "1", "--plots", "false"))
    main_finetune.main(args)
    return out / "checkpoint_best.pth"


def _pairs(data, n):
    ol = sorted((data / "data" / "DvXray_Positive_Samples").glob("*_OL.png"))[:n]
    return [(p, p.with_name(p.name.replace("_OL", "_SD"))) for p in ol]


def test_trainer_records_the_preprocessing(dv_run, dvxray_data):
    prep = load_checkpoint(dv_run)["preprocessing"]
    classes = (dvxray_data / "annotations" / "classes.txt").read_text().split()
    assert prep["paper"] == "dvxray" and prep["input_size"] == [32, 32] and prep["class_names"] == classes
    assert paper_of_checkpoint(dv_run) == "dvxray"


def test_inputs_are_the_validation_transform(dvxray_data, dv_run):
    loaded = ADAPTER.load(dv_run, device=torch.device("cpu"))
    path = _pairs(dvxray_data, 1)[0][0]
    ours = to_input(decode_image(path, loaded.preprocessing)[0], loaded.preprocessing)
    torch.testing.assert_close(ours, build_eval_transform(32)(load_image(path, "RGB")), rtol=0, atol=1e-6)


def test_predict_pairs_corrupt_resume(dv_run, dvxray_data, tmp_path, capsys):
    pairs = _pairs(dvxray_data, 5)
    src = dvxray_data / "data" / "DvXray_Positive_Samples"
    folder = corrupt_copy(src, tmp_path / "bags", [p for pair in pairs[:3] for p in pair], corrupt="Q00001_OL.png")
    shutil.copyfile(pairs[0][1], folder / "Q00001_SD.png")
    shutil.copyfile(pairs[0][0], folder / "Q00002_OL.png")  # no SD view: listed as unpaired
    classes = (dvxray_data / "annotations" / "classes.txt").read_text().split()
    new = [(pairs[3][0], folder / pairs[3][0].name), (pairs[3][1], folder / pairs[3][1].name)]
    table = check_predict_cli(predict, dv_run, folder, tmp_path / "pred.csv", new_files=new,
                              key_columns=("image_OL", "image_SD"), class_names=classes, capsys=capsys,
                              corrupt="Q00001_OL.png", n_new=1)
    assert len(table) == 5  # 3 pairs + the corrupt pair, then one new pair
    added = table[table["image_OL"] == pairs[3][0].name]
    assert len(added) == 1 and added.iloc[0]["image_SD"] == pairs[3][1].name and added.iloc[0]["skipped"] == ""
    row = table.iloc[0]
    probs = np.array([float(row[c]) for c in classes])
    assert row["predicted"] == ";".join(c for c, p in zip(classes, probs) if p >= 0.5)


def test_predict_from_a_two_column_list_with_stored_thresholds(dv_run, dvxray_data, tmp_path):
    classes = (dvxray_data / "annotations" / "classes.txt").read_text().split()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = run_dir / "checkpoint_best.pth"
    shutil.copyfile(dv_run, ckpt)
    lst = tmp_path / "pairs.txt"
    lst.write_text("".join(f"{a} {b}\n" for a, b in _pairs(dvxray_data, 2)))
    with pytest.raises(ValueError, match="no per-class thresholds"):
        predict.main(argparse.ArgumentParser(parents=[predict.get_args_parser()]).parse_args(
            ["--checkpoint", str(ckpt), "--images", str(lst), "--output", str(tmp_path / "p.csv"), "--device", "cpu",
             "--threshold", "val"]))
    (run_dir / "thresholds.json").write_text('{"thresholds": [' + ", ".join(["0.0"] * len(classes)) + "]}")
    table = predict.main(argparse.ArgumentParser(parents=[predict.get_args_parser()]).parse_args(
        ["--checkpoint", str(ckpt), "--images", str(lst), "--output", str(tmp_path / "p.csv"), "--device", "cpu",
         "--threshold", "val"]))
    assert table.iloc[0]["predicted"] == ";".join(classes)  # threshold 0: every class


def test_refused_without_preprocessing(dv_run, dvxray_data, tmp_path, capsys):
    ckpt = load_checkpoint(dv_run)
    ckpt.pop("preprocessing")
    ckpt["args"] = {**ckpt["args"], "classes_file": str(tmp_path / "gone.txt")}
    old = tmp_path / "old.pth"
    save_checkpoint(old, ckpt)
    check_refused_without_preprocessing(predict, old, dvxray_data / "data", tmp_path / "x.csv", capsys,
                                        missing=("class_names",))
    # an older checkpoint whose classes file is still there: derived from its args
    ckpt["args"]["classes_file"] = str(dvxray_data / "annotations" / "classes.txt")
    save_checkpoint(old, ckpt)
    assert ADAPTER.load(old, device=torch.device("cpu")).preprocessing.input_size == (32, 32)


def test_explain_draws_both_views(dv_run, dvxray_data, tmp_path):
    check_explain(predict, dv_run, dvxray_data / "data" / "DvXray_Positive_Samples", tmp_path / "e.csv", n=2)


def test_export_two_inputs_onnx_and_torchscript(dv_run, dvxray_data, tmp_path):
    lst = tmp_path / "pairs.txt"
    lst.write_text("".join(f"{a} {b}\n" for a, b in _pairs(dvxray_data, 2)))
    check_export_parity(dv_run, tmp_path, images=lst, formats=("onnx", "torchscript", "safetensors"))
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image_OL", "image_SD"]


def test_demo_command_from_the_data_folder(dv_run, dvxray_data, tmp_path, monkeypatch):
    """shell/demo.sh's form: the split list as it is, relative ./data paths, run from the data folder."""
    monkeypatch.chdir(dvxray_data)
    out = tmp_path / "run" / "predict" / "predictions.csv"
    table = predict.main(argparse.ArgumentParser(parents=[predict.get_args_parser()]).parse_args(
        ["--checkpoint", str(dv_run), "--images", "annotations/DvXray_test.txt", "--output", str(out),
         "--device", "cpu", "--explain", "1", "--overwrite"]))
    n = len((dvxray_data / "annotations" / "DvXray_test.txt").read_text().splitlines())
    assert len(table) == n and (table["skipped"] == "").all()
    from common.demo_table import summary

    status = tmp_path / "status.tsv"
    status.write_text(f"dvxray\tpassed\t1\tbash dvxray/demo.sh\t{tmp_path / 'run'}\n")
    assert str(out.parent / "predictions_explain") in summary(status)


def test_threshold_val_uses_what_common_thresholds_fitted(dv_run, dvxray_data, tmp_path):
    # the chain a user runs: train -> python -m common.thresholds RUN_DIR -> predict.py --threshold val
    from common.thresholds import main as thresholds_main

    run_dir = tmp_path / "run"
    shutil.copytree(dv_run.parent, run_dir)
    assert thresholds_main([str(run_dir), "--method", "f1"]) == 0
    fitted = json.loads((run_dir / "thresholds.json").read_text())["thresholds"]
    classes = (dvxray_data / "annotations" / "classes.txt").read_text().split()
    assert list(fitted) == classes
    lst = tmp_path / "pairs.txt"
    lst.write_text("".join(f"{a} {b}\n" for a, b in _pairs(dvxray_data, 4)))
    table = predict.main(argparse.ArgumentParser(parents=[predict.get_args_parser()]).parse_args(
        ["--checkpoint", str(run_dir / "checkpoint_best.pth"), "--images", str(lst), "--output",
         str(tmp_path / "p.csv"), "--device", "cpu", "--threshold", "val"]))
    for _, row in table.iterrows():
        want = ";".join(c for c in classes if float(row[c]) >= fitted[c])
        assert row["predicted"] == want
