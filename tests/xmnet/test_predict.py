"""xmnet/predict.py and its export (issue 18): best_model.pth with its recorded flags, an older one read
with the run's args.json, vein masks, corrupt image, refusal, resume, explain, ONNX/TorchScript."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import save_checkpoint
from common.preprocessing import decode_image, to_input
from common.synth import xmnet as synth_xmnet
from tests.predict_helpers import (
    check_explain,
    check_export_parity,
    check_predict_cli,
    check_refused_without_preprocessing,
    corrupt_copy,
    parse,
)
from xmnet import predict
from xmnet.adapter import ADAPTER, preprocessing_from_args
from xmnet.backboneModels import XMNetModel
from xmnet.leafvein2 import LeafVeinDataset

FLAGS = {"backbone_class": "resnet18", "num_classes": 3, "xmnet": True, "mmanet": False, "seg_included": True,
         "cls_included": True, "unet": True, "att_from": 4, "fsds": False, "crop_size": 64}


@pytest.fixture(scope="module")
def xm(tmp_path_factory):
    root = tmp_path_factory.mktemp("xmnet_predict")
    synth_xmnet.write(root / "data" / "soybean_2_1", 16, 0)
    torch.manual_seed(0)
    model = XMNetModel("resnet18", 3, attention="xmnet", segmentation=True, unet=True, att_from=4)
    run = root / "run"
    ckpt = run / "best_model.pth"
    save_checkpoint(ckpt, {"net": model.state_dict(), "test_iou": 0.1, "Test_acc": 0.5, "epoch": 0, "args": FLAGS,
                           "preprocessing": preprocessing_from_args(FLAGS)})
    older = root / "older" / "best_model.pth"  # written before the flags were recorded: args.json beside it
    save_checkpoint(older, {"net": model.state_dict(), "test_iou": 0.1, "Test_acc": 0.5, "epoch": 0})
    (older.parent / "args.json").write_text(json.dumps(FLAGS))
    return root, ckpt, older, sorted((root / "data" / "soybean_2_1" / "test").iterdir())


def test_inputs_are_the_test_split_transform(xm):
    root, ckpt, _, images = xm
    loaded = ADAPTER.load(ckpt, device=torch.device("cpu"))
    data = LeafVeinDataset(root / "data" / "soybean_2_1", "test", train=False, crop=64)
    ours = to_input(decode_image(data.records[0].path, loaded.preprocessing)[0], loaded.preprocessing)
    torch.testing.assert_close(ours, data[0][0], rtol=0, atol=1e-6)


def test_predict_masks_corrupt_and_resume(xm, tmp_path, capsys):
    _, ckpt, _, images = xm
    folder = corrupt_copy(images[0].parent, tmp_path / "leaves", images[:3])
    table = check_predict_cli(predict, ckpt, folder, tmp_path / "p.csv", new_files=[(images[3], folder / images[3].name)],
                              key_columns=("image",), class_names=["class_1", "class_2", "class_3"], capsys=capsys)
    row = table[table["skipped"] == ""].iloc[0]
    assert row["predicted"] == row["top1"] and {row["top1"], row["top2"], row["top3"]} == {"class_1", "class_2",
                                                                                             "class_3"}
    mask = np.asarray(Image.open(row["mask"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}


def test_older_checkpoint_uses_args_json_and_is_refused_without(xm, tmp_path, capsys):
    _, ckpt, older, images = xm
    a = predict.main(parse(predict, ["--checkpoint", older, "--images", images[0].parent, "--output", tmp_path / "a.csv",
                                     "--device", "cpu"]))
    b = predict.main(parse(predict, ["--checkpoint", ckpt, "--images", images[0].parent, "--output", tmp_path / "b.csv",
                                     "--device", "cpu"]))
    assert a.drop(columns="mask").equals(b.drop(columns="mask"))
    (older.parent / "args.json").unlink()
    check_refused_without_preprocessing(predict, older, images[0].parent, tmp_path / "x.csv", capsys,
                                        missing=("input_size", "class_names"))


def test_explain_and_export_cls_and_seg_heads(xm, tmp_path):
    _, ckpt, _, images = xm
    check_explain(predict, ckpt, images[0].parent, tmp_path / "e.csv", n=1)
    check_export_parity(ckpt, tmp_path, images=images[0].parent)
    import onnx

    assert [o.name for o in onnx.load(str(tmp_path / "model.onnx")).graph.output] == ["logits", "vein_logits"]
