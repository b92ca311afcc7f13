"""cxrlt/predict.py's shared interface beside its original flags, and the cxrlt export (issue 18)."""

from __future__ import annotations

import argparse

import pytest
import torch

from common.checkpoint import save_checkpoint
from common.preprocessing import decode_image, to_input
from cxrlt import export_safetensors, predict
from cxrlt.adapter import ADAPTER, preprocessing_from_args
from cxrlt.data import EvalTransform, read_cxr
from cxrlt.model import ConvNeXtV2CXR
from tests.cxrlt._helpers import write_longtail_padchest
from tests.predict_helpers import (
    check_explain,
    check_export_parity,
    check_predict_cli,
    check_refused_without_preprocessing,
    corrupt_copy,
    parse,
)


@pytest.fixture(scope="module")
def cx(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxrlt_predict")
    names = write_longtail_padchest(root, 8)
    torch.manual_seed(0)
    model = ConvNeXtV2CXR(len(names), backbone="convnextv2_atto", drop_path_rate=0.0)
    args = {"model": "convnextv2_atto", "image_size": 32}
    ckpt = root / "run" / "checkpoint_last.pth"
    save_checkpoint(ckpt, {"model": model.state_dict(), "args": args, "trainer": "cxrlt/train_stage2.py",
                           "preprocessing": preprocessing_from_args(argparse.Namespace(**args), names)})
    original = root / "original.pth"  # the original code's layout: weights only
    save_checkpoint(original, {"model_state_dict": model.state_dict()})
    return root, ckpt, original, names, sorted((root / "images").glob("*.png"))


def test_inputs_are_the_training_evaluation_transform(cx):
    _, ckpt, _, _, images = cx
    loaded = ADAPTER.load(ckpt, device=torch.device("cpu"))
    assert loaded.preprocessing.input_size == (32, 32)
    ours = to_input(decode_image(images[0], loaded.preprocessing)[0], loaded.preprocessing)  # a 16-bit PNG
    torch.testing.assert_close(ours, EvalTransform(32)(read_cxr(images[0])), rtol=0, atol=1e-6)


def test_predict_corrupt_and_resume(cx, tmp_path, capsys):
    _, ckpt, _, names, images = cx
    folder = corrupt_copy(images[0].parent, tmp_path / "imgs", images[:4])
    check_predict_cli(predict, ckpt, folder, tmp_path / "p.csv", new_files=[(images[4], folder / images[4].name)],
                      key_columns=("image",), class_names=names, capsys=capsys)


def test_original_layout_needs_image_size_and_interfaces_exclude_each_other(cx, tmp_path, capsys):
    _, ckpt, original, names, images = cx
    check_refused_without_preprocessing(predict, original, images[0].parent, tmp_path / "x.csv", capsys,
                                        missing=("input_size", "class_names"), extra=["--model", "convnextv2_atto"])
    with pytest.raises(ValueError, match="exclude each other"):
        predict.main(parse(predict, [images[0], "--images", images[0].parent, "--checkpoint", ckpt]))


def test_safetensors_export_carries_the_preprocessing(cx, tmp_path):
    _, ckpt, _, names, images = cx
    out = tmp_path / "w.safetensors"
    export_safetensors.main(parse(export_safetensors, ["--checkpoint", ckpt, "--output", out, "--no-use_ema"]))
    a = predict.main(parse(predict, ["--checkpoint", out, "--images", images[0].parent, "--output",
                                     tmp_path / "a.csv", "--device", "cpu"]))
    b = predict.main(parse(predict, ["--checkpoint", ckpt, "--images", images[0].parent, "--output",
                                     tmp_path / "b.csv", "--device", "cpu"]))
    assert a.equals(b) and list(a.columns[1:1 + len(names)]) == names


def test_explain_and_export(cx, tmp_path):
    _, ckpt, _, _, images = cx
    check_explain(predict, ckpt, images[0].parent, tmp_path / "e.csv", n=1)
    check_export_parity(ckpt, tmp_path, images=images[0].parent)
