import math

import pytest
import torch
from torch import nn

from common.cli import str2bool
from common.ema import ModelEma
from common.optim import param_groups
from common.schedule import ConstantSchedule, PiecewiseSchedule, WarmupCosineSchedule


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_matches_hand_computation_including_buffers():
    model = _net()
    ema = ModelEma(model, decay=0.9)
    e0 = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.randn(8, 3))  # changes BN running stats
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    m = model.state_dict()
    got = ema.module.state_dict()
    for k in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(got[k], 0.9 * e0[k] + 0.1 * m[k], atol=1e-6), k
    assert got["1.num_batches_tracked"] == m["1.num_batches_tracked"]


def test_ema_parameters_only_leaves_buffers_as_created():
    model = _net()
    ema = ModelEma(model, decay=0.5, include_buffers=False)
    model.train()
    model(torch.randn(8, 3))
    ema.update(model)
    got = ema.module.state_dict()
    assert torch.equal(got["1.running_mean"], torch.zeros(4))
    assert torch.equal(got["1.running_var"], torch.ones(4))


def test_ema_warmup_decay():
    ema = ModelEma(_net(), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates.fill_(90)
    assert ema.current_decay() == pytest.approx(91 / 100)


def test_warmup_cosine_values_at_chosen_steps():
    s = WarmupCosineSchedule(1.0, total_updates=110, warmup_updates=10, min_lr=0.1)
    g = {}
    assert s.lr_for(0, g) == 0.0
    assert s.lr_for(5, g) == pytest.approx(0.5)
    assert s.lr_for(10, g) == pytest.approx(1.0)
    assert s.lr_for(60, g) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert s.lr_for(110, g) == pytest.approx(0.1)
    assert s.lr_for(500, g) == pytest.approx(0.1)
    assert s.lr_for(60, {"lr_scale": 0.1}) == pytest.approx(0.1 * s.lr_for(60, g))
    assert s.lr_for(60, {"fixed_lr": 7.0}) == 7.0


def test_piecewise_schedule_switches_and_restarts_count():
    s = PiecewiseSchedule([(0, ConstantSchedule(1e-3)), (5, WarmupCosineSchedule(1e-4, 10, warmup_updates=2))])
    assert s.lr_for(4, {}) == 1e-3
    assert s.lr_for(5, {}) == 0.0
    assert s.lr_for(6, {}) == pytest.approx(5e-5)
    with pytest.raises(ValueError, match="start"):
        PiecewiseSchedule([(3, ConstantSchedule(1.0))])


def test_param_groups_no_decay_and_lr_scales():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, 0.05, no_weight_decay_norm_bias=True, lr_scales={"2": 10.0})
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model[0].weight)]["weight_decay"] == 0.05
    assert by_param[id(model[1].weight)]["weight_decay"] == 0.0
    assert by_param[id(model[2].bias)]["weight_decay"] == 0.0
    assert by_param[id(model[2].weight)]["lr_scale"] == 10.0
    assert id(model[0].bias) not in by_param  # frozen parameters are skipped


@pytest.mark.parametrize("text,value", [("yes", True), ("T", True), ("1", True), ("no", False), ("f", False), ("0", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_str2bool_rejects_other_words():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected a boolean.*'maybe'"):
        str2bool("maybe")
