"""charm_xray/predict.py and its export (issue 18): final_<exp>.pth as train.py writes it, a plain state
dict (the original's layout), corrupt image, refusal, resume, explain, ONNX/TorchScript in eval mode."""

from __future__ import annotations

import argparse

import pytest
import torch

from charm_xray import config, predict
from charm_xray.adapter import ADAPTER
from charm_xray.data import build_transform
from charm_xray.engine_charm import save_model_file
from charm_xray.models import build_model
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data.images import load_image
from common.engine import Task
from common.export import ExportError, export_checkpoint
from common.preprocessing import decode_image, to_input
from common.synth import chestxray14
from tests.predict_helpers import (
    check_explain,
    check_export_parity,
    check_predict_cli,
    check_refused_without_preprocessing,
    corrupt_copy,
)


@pytest.fixture(scope="module")
def charm(tmp_path_factory):
    root = tmp_path_factory.mktemp("charm_predict")
    chestxray14.write(root / "data", 16, 0)
    images = sorted(root.glob("data/images_*/**/*.png"))
    torch.manual_seed(0)
    model = build_model("resnet18", 14, bank_size=8)
    # a few rows in the bank, as after training, so that retrieval is part of the exported graph
    model.memory_bank.write(torch.randn(5, model.feature_dim))
    args = argparse.Namespace(model_name="resnet18", image_size=48, bank_size=8)
    ckpt = root / "working" / "models" / "final_experiment.pth"
    save_model_file(ckpt, Task(model), torch.optim.SGD(model.parameters(), lr=0.1), args)
    return root, ckpt, images


def test_final_checkpoint_records_the_preprocessing(charm):
    _, ckpt, _ = charm
    prep = load_checkpoint(ckpt)["preprocessing"]
    assert prep["input_size"] == [48, 48] and prep["class_names"] == list(config.DISEASE_LABELS)


def test_inputs_are_the_test_transform(charm):
    _, ckpt, images = charm
    loaded = ADAPTER.load(ckpt, device=torch.device("cpu"))
    ours = to_input(decode_image(images[0], loaded.preprocessing)[0], loaded.preprocessing)
    torch.testing.assert_close(ours, build_transform(48, train=False)(load_image(images[0], "RGB")), rtol=0, atol=1e-6)


def test_predict_corrupt_and_resume(charm, tmp_path, capsys):
    _, ckpt, images = charm
    folder = corrupt_copy(images[0].parent, tmp_path / "xrays", images[:4])
    new = [(images[4], folder / images[4].name)]
    check_predict_cli(predict, ckpt, folder, tmp_path / "p.csv", new_files=new, key_columns=("image",),
                      class_names=list(config.DISEASE_LABELS), capsys=capsys)


def test_plain_state_dict_needs_image_size(charm, tmp_path, capsys):
    _, ckpt, images = charm
    plain = tmp_path / "plain.pth"
    save_checkpoint(plain, load_checkpoint(ckpt)["model"])
    check_refused_without_preprocessing(predict, plain, images[0].parent, tmp_path / "x.csv", capsys,
                                        missing=("input_size", "--image_size"))
    table = predict.main(argparse.ArgumentParser(parents=[predict.get_args_parser()]).parse_args(
        ["--checkpoint", str(plain), "--images", str(images[0].parent), "--output", str(tmp_path / "x.csv"),
         "--device", "cpu", "--image_size", "48"]))
    reference = predict.main(argparse.ArgumentParser(parents=[predict.get_args_parser()]).parse_args(
        ["--checkpoint", str(ckpt), "--images", str(images[0].parent), "--output", str(tmp_path / "y.csv"),
         "--device", "cpu", "--image_size", "64"]))  # recorded 48 wins over the flag
    assert table.equals(reference)


def test_explain_with_spatial_attention(charm, tmp_path):
    _, ckpt, images = charm
    check_explain(predict, ckpt, images[0].parent, tmp_path / "e.csv", n=2)


def test_eval_mode_export_keeps_the_bank(charm, tmp_path):
    _, ckpt, images = charm
    before = load_checkpoint(ckpt)["model"]["memory_bank.memory"].clone()
    check_export_parity(ckpt, tmp_path, images=images[0].parent)
    loaded = ADAPTER.load(ckpt, device=torch.device("cpu"))
    torch.testing.assert_close(loaded.model.memory_bank.memory, before)  # read, never written


def test_export_refused_above_tolerance(charm, tmp_path):
    _, ckpt, _ = charm
    out = tmp_path / "m.pt"
    with pytest.raises(ExportError, match="export refused"):
        export_checkpoint(ckpt, fmt="torchscript", out=out, tolerance=-1.0, log=lambda _: None)
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
