"""Every trainer started without a pretrained weights file says so: a WARNING on the console and the same
sentence in its metrics.json (``protocol.warnings``); cxrlt reads local timm weights (``--pretrained_path``)
and, without them, never reaches for the hub (tiny models, synthetic data, CPU)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from common.pretrained import add_protocol_warnings, random_init_warning


def _warned(caplog, flag: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and f"no {flag} given" in r.getMessage()]


def _recorded(metrics_file: Path, flag: str) -> list[str]:
    metrics = json.loads(metrics_file.read_text())
    return [w for w in metrics.get("protocol", {}).get("warnings", []) if f"no {flag} given" in w]


def test_random_init_warning_is_logged_and_merged_into_protocol_warnings(caplog):
    with caplog.at_level(logging.WARNING):
        msg = random_init_warning("--x", "net", "ImageNet weights", hint="download y")
    assert _warned(caplog, "--x") == [msg] and "random weights" in msg and msg.endswith("; download y")
    metrics = {"protocol": {"split": "s", "warnings": ["leakage"]}}
    add_protocol_warnings(metrics, [msg, msg])
    assert metrics["protocol"] == {"split": "s", "warnings": ["leakage", msg]}
    assert add_protocol_warnings({}, []) == {}


def test_dvxray_without_finetune(tmp_path, caplog):
    from common.synth.dvxray import write
    from dvxray import main_finetune
    from tests.dvxray.helpers import tiny_args

    write(tmp_path / "data", 16, seed=1)
    parser = argparse.ArgumentParser(parents=[main_finetune.get_args_parser()])
    args = parser.parse_args(tiny_args(tmp_path / "data", tmp_path / "run", "--epochs", "1", "--teacher_mode", "false",
                                       "--plots", "false"))
    main_finetune.check_args(parser, args)
    with caplog.at_level(logging.WARNING):
        main_finetune.main(args)
    assert _warned(caplog, "--finetune") and _recorded(tmp_path / "run" / "metrics.json", "--finetune")


def test_dcal_without_model_pretrained_path(tmp_path, caplog):
    from common.synth import cub200
    from dcal.scripts import train_fgvc
    from tests.dcal.conftest import FGVC_CONFIG, tiny_opts

    cub200.write(tmp_path / "cub", 16, 0, num_classes=4)
    args = argparse.ArgumentParser(parents=[train_fgvc.get_args_parser()]).parse_args(
        ["--config", str(FGVC_CONFIG), "--no_plots", "--opts", *tiny_opts(tmp_path / "cub", 4, tmp_path / "run"),
         "model.num_sa_blocks=1", "model.num_pwca_blocks=0"])
    with caplog.at_level(logging.WARNING):
        train_fgvc.main(args)
    assert _warned(caplog, "model.pretrained_path") and _recorded(tmp_path / "run" / "metrics.json",
                                                                  "model.pretrained_path")


def test_xmnet_without_pretrained_weights(tmp_path, caplog, monkeypatch):
    from common.synth.xmnet import write
    from tests.xmnet.helpers import TINY
    from xmnet import Train

    write(tmp_path / "data" / "soybean_2_1", 30, seed=0, num_classes=3)
    monkeypatch.chdir(tmp_path)
    argv = ["--xmnet", "--cls_included", "--backbone_class", "resnet18", "--dataset", "soybean_2_1", *TINY,
            "--no-xgb_stage", "--plots", "false"]
    with caplog.at_level(logging.WARNING):
        Train.main(Train.parse_args(argv))
    metrics = tmp_path / "output/resnet18/XMNet_Classification/metrics.json"
    assert _warned(caplog, "--pretrained_weights") and _recorded(metrics, "--pretrained_weights")


def test_charm_xray_without_pretrained_weights(tmp_path, caplog):
    from charm_xray import pipeline
    from charm_xray.train import check_args, get_args_parser
    from common.synth import chestxray14

    chestxray14.write(tmp_path / "data", 64, 2)
    tiny = ["--model_name", "resnet18", "--image_size", "32", "--batch_size_phase1", "8", "--batch_size_phase2", "8",
            "--batch_size_test", "8", "--amp", "none", "--num_workers", "0", "--no_progress", "--lr_find_iters", "4",
            "--freeze_epochs", "1", "--phase1_epochs", "1", "--phase2_epochs", "1", "--plots", "false"]
    parser = get_args_parser()
    args = parser.parse_args([*tiny, "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")])
    check_args(parser, args)
    with caplog.at_level(logging.WARNING):
        pipeline.main(args)
    metrics = tmp_path / "out/runs/experiment/metrics.json"
    assert _warned(caplog, "--pretrained_weights") and _recorded(metrics, "--pretrained_weights")
    # the split's own warning stays beside it
    assert any("leakage" in w for w in json.loads(metrics.read_text())["protocol"]["warnings"])


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> Path:
    from common.synth import mimic

    root = tmp_path_factory.mktemp("mimic")
    mimic.write(root, n=24, seed=0)
    return root


def _cxrlt_stage1(root: Path, out: Path, *extra: str) -> dict:
    from cxrlt import train_stage1

    args = argparse.ArgumentParser(parents=[train_stage1.get_args_parser()]).parse_args(
        ["--data_dir", str(root), "--model", "convnextv2_atto", "--image_size", "32", "--num_workers", "0",
         "--device", "cpu", "--amp", "none", "--batch_size", "8", "--warmup_head_epochs", "0", "--finetune_epochs", "1",
         "--output_dir", str(out), "--plots", "false", *extra])
    return train_stage1.main(args)


def test_cxrlt_default_pretrained_without_a_file_warns_and_never_downloads(mimic_root, tmp_path, caplog, monkeypatch):
    import timm.models._builder as builder

    def no_hub(*a, **k):
        raise AssertionError("a hub download was attempted")

    monkeypatch.setattr(builder, "load_pretrained", no_hub)
    with caplog.at_level(logging.WARNING):
        _cxrlt_stage1(mimic_root, tmp_path / "run")  # --pretrained true is the default
    warned = _warned(caplog, "--pretrained_path")
    assert warned and "https://huggingface.co/timm/convnextv2_atto.fcmae_ft_in1k" in warned[0]
    assert _recorded(tmp_path / "run" / "metrics.json", "--pretrained_path")


def test_cxrlt_pretrained_path_loads_the_local_timm_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    from cxrlt.model import ConvNeXtV2CXR, StandardCXR

    source = timm.create_model("convnextv2_atto", pretrained=False)  # a hub file holds the 1000-class head too
    with torch.no_grad():
        for i, p in enumerate(source.parameters()):
            p.fill_(0.001 * i)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    want = source.state_dict()
    for model in (StandardCXR(14, backbone="convnextv2_atto", pretrained_backbone=path),
                  ConvNeXtV2CXR(30, backbone="convnextv2_atto", pretrained_backbone=str(path))):
        got = model.backbone.state_dict()
        assert got and all(torch.equal(v, want[k]) for k, v in got.items())
    with pytest.raises(FileNotFoundError, match=r"--pretrained_path: weights file not found: .*nope.*huggingface"):
        StandardCXR(14, backbone="convnextv2_atto", pretrained_backbone=tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="local file"):
        StandardCXR(14, backbone="convnextv2_atto", pretrained_backbone=True)


def test_cxrlt_pretrained_path_on_the_command_line(mimic_root, tmp_path, caplog):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(timm.create_model("convnextv2_atto", pretrained=False).state_dict(), str(path))
    with caplog.at_level(logging.WARNING):
        _cxrlt_stage1(mimic_root, tmp_path / "run", "--pretrained_path", str(path))
    assert not _warned(caplog, "--pretrained_path")
    assert not _recorded(tmp_path / "run" / "metrics.json", "--pretrained_path")
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(ValueError, match="--pretrained_path is given but --pretrained is false"):
        _cxrlt_stage1(mimic_root, tmp_path / "run", "--pretrained", "false", "--pretrained_path", str(path))


def test_charm_xray_reads_torchvision_densenet_files_with_their_legacy_key_names(tmp_path):
    """torchvision's densenet121-a639ec97.pth names layers 'denselayer1.norm.1.weight' (torchvision renames
    them when it loads the file); --pretrained_weights takes that file as published."""
    import re

    import torchvision

    from charm_xray.models import build_model

    net = torchvision.models.densenet121(weights=None)
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.fill_(0.001 * i)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.", r"\1.\2.", k): v for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet121-a639ec97.pth")
    model = build_model("densenet121", 14, pretrained_weights=tmp_path / "densenet121-a639ec97.pth")
    got = model.base_model.state_dict()
    want = {k: v for k, v in net.state_dict().items() if k.startswith("features.") and "num_batches" not in k}
    assert want and all(torch.equal(got[k], v) for k, v in want.items())
