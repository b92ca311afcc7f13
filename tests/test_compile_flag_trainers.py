"""Every trainer's ``--compile`` and ``--channels_last`` reach ``common.engine.fit``.

For ``--compile``, torch.compile is replaced by a stand-in that stops the run at its first call, so each
case costs only the data and model set-up (a real compile of the shared loop is tested in
tests/common/test_engine_compile.py). ``--channels_last true`` trains each paper's tiny model for real:
every model must accept NHWC image batches (no ``.view`` on a permuted tensor).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


class CompileReached(Exception):
    pass


@pytest.fixture
def stop_at_compile(monkeypatch):
    def fake_compile(module, *args, **kwargs):
        raise CompileReached(type(module).__name__)

    monkeypatch.setattr(torch, "compile", fake_compile)


def _parse(module, argv):
    return argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)


def _dvxray(tmp_path, flag):
    from common.synth import dvxray as synth
    from dvxray import main_finetune
    from tests.dvxray.helpers import tiny_args

    data = tmp_path / "data"
    synth.write(data, 16, 8)
    main_finetune.main(_parse(main_finetune, tiny_args(data, tmp_path / "out", "--epochs", "1", *flag)))


def _cxrlt(tmp_path, flag):
    from common.synth import mimic
    from cxrlt import train_stage1

    mimic.write(tmp_path / "mimic", n=16, seed=0)
    train_stage1.main(_parse(train_stage1, [
        "--data_dir", str(tmp_path / "mimic"), "--model", "convnextv2_atto", "--pretrained", "false",
        "--image_size", "32", "--num_workers", "0", "--device", "cpu", "--amp", "none", "--batch_size", "8",
        "--warmup_head_epochs", "1", "--finetune_epochs", "1", "--output_dir", str(tmp_path / "out"), *flag]))


def _dcal(tmp_path, flag):
    from common.synth import cub200
    from dcal.scripts import train_fgvc
    from tests.dcal.conftest import FGVC_CONFIG, tiny_opts

    cub200.write(tmp_path / "cub", 16, 0, num_classes=4)
    train_fgvc.main(_parse(train_fgvc, ["--config", str(FGVC_CONFIG), "--no_plots", *flag, "--opts",
                                        *tiny_opts(tmp_path / "cub", 4, tmp_path / "out")]))


def _charm(tmp_path, flag):
    from charm_xray import pipeline
    from charm_xray.train import check_args, get_args_parser
    from common.synth import chestxray14
    from tests.charm_xray.test_train import TINY

    chestxray14.write(tmp_path / "data", 40, 2)
    parser = get_args_parser()
    args = parser.parse_args(["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
                              "--lr", "1e-3", *TINY, *flag])
    check_args(parser, args)
    pipeline.main(args)


def _xmnet(tmp_path, flag):
    from common.synth.xmnet import write
    from tests.xmnet.helpers import tiny
    from xmnet import Train

    write(tmp_path / "data" / "soybean_2_1", 24, seed=0, num_classes=3)
    Train.main(Train.parse_args(["--xmnet", "--cls_included", *tiny(tmp_path / "data", tmp_path / "out"), *flag]))


def _xmnet_seg(tmp_path, flag):
    from common.synth.xmnet import write
    from tests.xmnet.helpers import tiny
    from xmnet import Train

    write(tmp_path / "data" / "soybean_2_1", 24, seed=0, num_classes=3)
    Train.main(Train.parse_args(["--xmnet", "--seg_included", "--fsds", *tiny(tmp_path / "data", tmp_path / "out"),
                                 "--plots", "false", *flag]))


TRAINERS = {"dvxray": _dvxray, "cxrlt": _cxrlt, "dcal": _dcal, "charm_xray": _charm, "xmnet": _xmnet,
            "xmnet_seg": _xmnet_seg}


@pytest.mark.parametrize("paper", sorted(TRAINERS))
def test_compile_flag_reaches_fit(paper, tmp_path, stop_at_compile):
    with pytest.raises(CompileReached) as reached:
        TRAINERS[paper](tmp_path, ["--compile"])
    # the first module compiled is the paper's Task (model + loss): the call came from fit
    from common.engine import Task

    assert reached.value.args[0] in {cls.__name__ for cls in _subclasses(Task)}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize("paper", sorted(TRAINERS))
def test_channels_last_trains_every_model(paper, tmp_path, monkeypatch):
    import common.engine

    real_to_device = common.engine.to_device
    layouts = []

    def spy(batch, device, *, channels_last=False):
        out = real_to_device(batch, device, channels_last=channels_last)
        if not channels_last:  # e.g. charm_xray's lr_find and test predictions outside fit
            return out
        items = out if isinstance(out, list | tuple) else [out]
        layouts.extend(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                       for t in items if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] > 1)
        return out

    monkeypatch.setattr(common.engine, "to_device", spy)
    TRAINERS[paper](tmp_path, ["--channels_last", "true"])
    assert layouts and all(layouts)  # fit was asked for NHWC, and the models accepted the image batches
