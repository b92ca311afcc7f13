"""fastai semantics of the two phases (charm_xray.md §14): optimizer settings, slice learning rates,
freezing, and SaveModelCallback's best-epoch reload at the end of a fit."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from charm_xray.engine_charm import (
    CharmTask,
    StageSettings,
    body_head_split,
    build_fastai_adam,
    fit_one_cycle,
    set_frozen,
    set_lr_max,
    slice_lrs,
)
from common.checkpoint import load_checkpoint
from common.dist import init_distributed
from common.engine import build_loader


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(torch.relu(self.backbone(x)))


def test_slice_semantics():
    assert slice_lrs((2e-5, 8e-5), 1) == [8e-5]
    assert slice_lrs((2e-5, 8e-5), 2) == pytest.approx([2e-5, 8e-5])
    assert slice_lrs((1e-4, 1e-2), 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert slice_lrs((None, 1e-3), 2) == pytest.approx([1e-4, 1e-3])
    assert slice_lrs((None, 1e-3), 1) == [1e-3]


def test_fastai_adam_groups_and_discriminative_lrs():
    model = _Tiny()
    opt = build_fastai_adam(model, 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.99)} and {g["eps"] for g in opt.param_groups} == {1e-5}
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    # weight decay only on the Linear weights: not on biases or BatchNorm parameters
    assert decayed == {id(model.backbone[0].weight), id(model.classifier.weight)}
    set_lr_max(opt, (2e-5, 8e-5), discriminative=False)
    assert {g["lr_max"] for g in opt.param_groups} == {8e-5}
    split = build_fastai_adam(model, 1e-3, split=True)
    set_lr_max(split, (2e-5, 8e-5), discriminative=True)
    lr_of = {id(p): g["lr_max"] for g in split.param_groups for p in g["params"]}
    assert lr_of[id(model.backbone[0].weight)] == pytest.approx(2e-5)
    assert lr_of[id(model.classifier.weight)] == pytest.approx(8e-5)


def test_freeze_keeps_batchnorm_trainable():
    model = _Tiny()
    set_frozen(model, True)
    assert not model.backbone[0].weight.requires_grad and model.backbone[1].weight.requires_grad
    assert model.classifier.weight.requires_grad
    set_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_fit_one_cycle_ends_on_the_best_valid_loss_epoch_and_skips_when_done(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = (x[:, :3] > 0).float()
    ctx = init_distributed("cpu")
    train = build_loader(TensorDataset(x, y), 16, train=True, ctx=ctx)
    # a validation set whose labels disagree with training: valid loss rises after the first epochs
    valid = build_loader(TensorDataset(x[:32], 1 - y[:32]), 16, train=False, ctx=ctx)
    model = _Tiny()
    task = CharmTask(model, nn.BCEWithLogitsLoss())
    opt = build_fastai_adam(model, 1e-2)
    settings = StageSettings(patience=None, min_delta=0.0, class_names=["a", "b", "c"], progress=False)
    summary = fit_one_cycle(tmp_path / "stage", task, opt, train, valid, epochs=4, lr=3e-2, settings=settings, ctx=ctx)
    rows = (tmp_path / "stage" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("val_loss")]) for r in rows[1:]]
    best_epoch = min(range(len(losses)), key=losses.__getitem__)
    assert summary["best_epoch"] == best_epoch and best_epoch < 3
    best = load_checkpoint(tmp_path / "stage" / "checkpoint_best.pth")
    assert all(torch.equal(best["model"][k], v) for k, v in model.state_dict().items())
    assert json.loads((tmp_path / "stage" / "stage_done.json").read_text())["best_epoch"] == best_epoch
    assert not (tmp_path / "stage" / "checkpoint_last.pth").exists()
    # a rerun of a finished stage trains nothing and reloads the best epoch
    fresh = _Tiny()
    fit_one_cycle(tmp_path / "stage", CharmTask(fresh, nn.BCEWithLogitsLoss()), build_fastai_adam(fresh, 1e-2),
                  train, valid, epochs=4, lr=3e-2, settings=settings, ctx=ctx)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    assert len((tmp_path / "stage" / "log.csv").read_text().splitlines()) == len(rows)


@pytest.mark.parametrize("model_name", ["efficientnet_b0", "efficientnet_b1", "resnet50", "densenet121", "vgg16_lka"])
def test_fastai_adam_comes_from_common_and_leaves_biases_and_batchnorm_undecayed(model_name):
    """fastai's ``wd_bn_bias=False``: no weight decay on BatchNorm parameters or biases, decay on the rest;
    the groups are common.optim's (one implementation), in the order a saved optimizer state expects."""
    from charm_xray.models import build_model
    from common.optim import fastai_adam

    model = build_model(model_name)
    bn = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    biases = {id(m.bias) for m in model.modules() if getattr(m, "bias", None) is not None}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for split in (False, True):
        opt = build_fastai_adam(model, 1e-3, split=split)
        undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
        assert undecayed == (bn | biases) & trainable and decayed == trainable - bn - biases
        body, head = body_head_split(model)
        ref = fastai_adam(model, 1e-3, parts={"body": body, "head": head} if split else {"all": body + head})
        assert [(g["part"], g["weight_decay"], [id(p) for p in g["params"]]) for g in opt.param_groups] == \
            [(g["part"], g["weight_decay"], [id(p) for p in g["params"]]) for g in ref.param_groups]
