"""One ``--amp`` flag for every trainer (common.cli.add_amp_flag): the same choices everywhere, each
script's own default, and XMNet's bare ``--amp`` (the original's switch: fp16 + GradScaler)."""

from __future__ import annotations

import importlib

import pytest

from common.cli import AMP_CHOICES

# (module, default): the defaults each script had before the flag moved into common.cli
TRAINERS = [
    ("charm_xray.train", "auto"),
    ("charm_xray.test_checkpoint", "none"),
    ("dvxray.main_finetune", "auto"),
    ("cxrlt.train_stage1", "fp16"),
    ("cxrlt.train_stage2", "fp16"),
    ("xmnet.Train", "none"),
]


def _amp_action(parser):
    return next(a for a in parser._actions if "--amp" in a.option_strings)


@pytest.mark.parametrize(("module", "default"), TRAINERS)
def test_every_trainer_has_one_amp_flag(module, default):
    parser = importlib.import_module(module).get_args_parser()
    action = _amp_action(parser)
    assert tuple(action.choices) == AMP_CHOICES == ("auto", "none", "bf16", "fp16")
    assert action.default == default
    assert f"(default: {default})" in action.help


def test_xmnet_bare_amp_is_the_original_fp16_switch():
    from xmnet.Train import get_args_parser

    p = get_args_parser()
    assert p.parse_args(["--amp"]).amp == "fp16"
    assert p.parse_args([]).amp == "none"
    assert p.parse_args(["--amp", "bf16"]).amp == "bf16"


@pytest.mark.parametrize("module", [m for m, _ in TRAINERS if m != "xmnet.Train"])
def test_other_trainers_need_a_value(module):
    parser = importlib.import_module(module).get_args_parser()
    assert _amp_action(parser).nargs is None
